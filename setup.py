# All package metadata lives in setup.cfg; pip needs this shim to install it.
from setuptools import setup

setup()
