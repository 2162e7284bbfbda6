"""Image paths of items.csv that leave the catalogue, or that name something other than a file
(cfimage/catalogue/reader.py): refused with the file, the line and the path."""

import os

import pytest

from cfimage.catalogue import reader
from tests.conftest import write_catalogue

INTERACTIONS = "user_id,item_id\nu1,a\nu1,b\nu2,c\n"


def _catalogue(tmp_path, third_image, **spec):
    """A catalogue whose third item's image path is `third_image`; the others are fine."""
    root = tmp_path / "catalogue"
    write_catalogue(root, "item_id,image,labels\na,images/a.png,x\nb,images/b.png,y\n"
                    f"c,{third_image},x\n", INTERACTIONS, ["images/a.png", "images/b.png"])
    return str(root), reader.CatalogueSpec(**spec)


def _outside_png(tmp_path):
    outside = tmp_path / "elsewhere" / "secret.png"
    outside.parent.mkdir()
    outside.write_bytes((tmp_path / "catalogue" / "images" / "a.png").read_bytes())
    return outside


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlinked_file", "symlinked_folder"])
def test_image_paths_that_resolve_outside_the_catalogue_are_refused(tmp_path, how):
    root, spec = _catalogue(tmp_path, "images/a.png")  # written first, rewritten below
    outside = _outside_png(tmp_path)
    image = {"dotdot": "../elsewhere/secret.png", "absolute": str(outside),
             "symlinked_file": "images/link.png", "symlinked_folder": "linked/secret.png"}[how]
    os.symlink(outside, os.path.join(root, "images", "link.png"))
    os.symlink(outside.parent, os.path.join(root, "linked"))
    root, spec = _catalogue(tmp_path, image)
    with pytest.raises(reader.CatalogueError) as error:
        reader.load_catalogue(root, spec)
    assert str(error.value) == (
        f"{root}/items.csv, line 4: image path {image!r} resolves to {outside}, outside the "
        f"catalogue directory {root} (1 such path(s) in all). Image paths must stay inside the "
        "catalogue (an absolute path, '..' or a symlink can leave it): move the images in, or "
        "pass --allow_outside_paths if you trust this catalogue.")
    allowed = reader.load_catalogue(root, reader.CatalogueSpec(allow_outside_paths=True))
    assert allowed.image_paths[2] == os.path.abspath(os.path.join(root, image))


def test_paths_inside_the_catalogue_may_use_dotdot_absolute_paths_and_links(tmp_path):
    root, _ = _catalogue(tmp_path, "images/a.png")
    os.symlink(os.path.join(root, "images", "b.png"), os.path.join(root, "images", "c.png"))
    for image in ["images/../images/b.png", os.path.join(root, "images", "b.png"),
                  "images/c.png"]:
        root, spec = _catalogue(tmp_path, image)
        assert reader.load_catalogue(root, spec).num_items == 3


def test_the_catalogue_directory_may_itself_be_a_symlink(tmp_path):
    root, spec = _catalogue(tmp_path, "images/a.png")
    os.symlink(root, tmp_path / "alias")
    assert reader.load_catalogue(str(tmp_path / "alias"), spec).num_items == 3


@pytest.mark.parametrize("kind, what", [
    ("directory", "is a directory"), ("fifo", "is a FIFO (named pipe)"),
    ("loop", "is a symlink loop (a link that leads back to itself)"), ("missing", "not found")])
def test_an_image_path_that_is_not_a_file_is_reported_as_what_it_is(tmp_path, kind, what):
    root, spec = _catalogue(tmp_path, "images/thing")
    thing = os.path.join(root, "images", "thing")
    if kind == "directory":
        os.mkdir(thing)
    elif kind == "fifo":
        os.mkfifo(thing)
    elif kind == "loop":
        os.symlink(thing, thing)
    with pytest.raises(reader.CatalogueError) as error:
        reader.load_catalogue(root, spec)
    message = str(error.value)
    assert message.startswith(f"{root}/items.csv, line 4: image file 'images/thing' {what} "), \
        message
    assert thing in message and "1 item(s) in all have no image" in message
    if kind != "missing":
        assert "not found" not in message


def test_the_flag_reaches_the_catalogue_spec():
    from tests.test_config import config_of
    assert not config_of().catalogue.spec.allow_outside_paths
    assert config_of("--allow_outside_paths").catalogue.spec.allow_outside_paths
