import numpy as np
import pytest

from cfimage.catalogue import reader as catalogue_lib
from tests.conftest import write_catalogue

IMAGES = ("images/a.png", "images/b.png", "images/c.png")
ITEMS = "item_id,image,labels\na,images/a.png,cat|dog\nb,images/b.png,dog\nc,images/c.png,\n"
INTERACTIONS = "user_id,item_id,weight\nu1,a,5\nu1,b,3\nu2,a,1\n"


def test_loads_a_valid_catalogue(tmp_path):
    root = write_catalogue(tmp_path, ITEMS, INTERACTIONS, IMAGES)
    cat = catalogue_lib.load_catalogue(root)
    assert list(cat.item_ids) == ["a", "b", "c"]
    assert cat.label_names == ["cat", "dog"]
    np.testing.assert_array_equal(cat.labels, [[1, 1], [0, 1], [0, 0]])
    np.testing.assert_array_equal(cat.labelled, [True, True, False])
    assert cat.multi_label
    assert list(cat.interactions.weight) == [5.0, 3.0, 1.0]
    assert cat.image_paths[0].endswith("images/a.png")


def test_column_names_are_configurable_and_weight_is_optional(tmp_path):
    items = "movieId,poster,genres\n1,images/a.png,Drama\n2,images/b.png,Comedy\n"
    root = write_catalogue(tmp_path, items, "userId,movieId\n7,1\n7,2\n", IMAGES[:2])
    spec = catalogue_lib.CatalogueSpec(item_id_column="movieId", image_column="poster",
                                       labels_column="genres", user_id_column="userId",
                                       interaction_item_column="movieId")
    cat = catalogue_lib.load_catalogue(root, spec)
    assert not cat.multi_label
    assert list(cat.interactions.weight) == [1.0, 1.0]


@pytest.mark.parametrize("items,interactions,message", [
    ("item_id,image,labels\na,images/a.png,x\na,images/b.png,y\n", INTERACTIONS,
     "line 3: duplicate item id 'a'"),
    ("item_id,image,labels\na,images/a.png,x\nz,images/zzz.png,y\n", INTERACTIONS,
     "line 3: image file 'images/zzz.png' not found"),
    ("item_id,image,labels\na,images/a.png,\nb,images/b.png,\n", INTERACTIONS,
     "no item has a label"),
    ("item_id,picture,labels\na,images/a.png,x\n", INTERACTIONS, "missing column(s) ['image']"),
    (ITEMS, "user_id,item_id\nu1,a\nu1,nope\n", "line 3: item id 'nope' is not in items.csv"),
    (ITEMS, "user_id,item_id,weight\nu1,a,5\nu1,b,nan\n", "line 3: 'weight' is 'nan'"),
    (ITEMS, "user_id,item_id,weight\nu1,a,-1\n", "line 2: 'weight' is '-1'"),
    (ITEMS, "user_id,item_id\n,a\n", "line 2: empty 'user_id'"),
])
def test_bad_catalogues_fail_with_file_line_and_value(tmp_path, items, interactions, message):
    root = write_catalogue(tmp_path, items, interactions, IMAGES)
    with pytest.raises(catalogue_lib.CatalogueError) as error:
        catalogue_lib.load_catalogue(root)
    assert message in str(error.value)
    assert str(tmp_path) in str(error.value)  # names the file


def test_unknown_interaction_items_can_be_kept_or_dropped(tmp_path):
    root = write_catalogue(tmp_path, ITEMS, "user_id,item_id\nu1,a\nu1,x\nu2,x\n", IMAGES)
    kept = catalogue_lib.load_catalogue(
        root, catalogue_lib.CatalogueSpec(unknown_interaction_items="keep"))
    assert len(kept.interactions) == 3 and "kept 2" in kept.notes[0]
    dropped = catalogue_lib.load_catalogue(
        root, catalogue_lib.CatalogueSpec(unknown_interaction_items="drop"))
    assert list(dropped.interactions.item_id) == ["a"]


def test_rare_and_ignored_labels_are_removed(tmp_path):
    items = ("item_id,image,labels\na,images/a.png,x|rare\nb,images/b.png,x| none \n"
             "c,images/c.png,none\n")
    root = write_catalogue(tmp_path, items, INTERACTIONS, IMAGES)
    cat = catalogue_lib.load_catalogue(root, catalogue_lib.CatalogueSpec(
        min_label_count=2, ignore_labels=("none",)))
    assert cat.label_names == ["x"]
    np.testing.assert_array_equal(cat.labelled, [True, True, False])
    assert "rare" in cat.notes[0]


def test_non_utf8_file_is_reported(tmp_path):
    root = write_catalogue(tmp_path, ITEMS, INTERACTIONS, IMAGES)
    with open(tmp_path / "items.csv", "wb") as f:
        f.write(b"item_id,image,labels\na,images/a.png,caf\xe9\n")
    with pytest.raises(catalogue_lib.CatalogueError, match="not valid UTF-8"):
        catalogue_lib.load_catalogue(root)


def test_the_task_flag_overrides_what_the_labels_say(tmp_path):
    from cfimage.catalogue import demo
    multi = catalogue_lib.load_catalogue(demo.make_demo_catalogue(
        str(tmp_path / "multi"), seed=1, num_items=60, num_users=30, image_size=16))
    single = catalogue_lib.load_catalogue(demo.make_demo_catalogue(
        str(tmp_path / "single"), seed=1, num_items=60, num_users=30, image_size=16,
        kind="control"))
    assert multi.multi_label and not single.multi_label
    assert [multi.is_multi_label(t) for t in ("auto", "multi_label", "single_label")] == \
        [True, True, False]
    assert [single.is_multi_label(t) for t in ("auto", "multi_label", "single_label")] == \
        [False, True, False]
