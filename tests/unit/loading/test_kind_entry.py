"""--add-kind: the entity kind appended to the YAML config, comments and layout kept."""

from __future__ import annotations

import pytest
import yaml

from idxr_pg.config import load_config
from idxr_pg.loading.errors import LoadError
from idxr_pg.loading.kind_entry import add_kind

MODEL = "tests.integration.worker_support:Item"
OTHER = f"  - name: other\n    model: {MODEL}\n    table: public.other\n    key: id\n"


def names(path) -> list[str]:
    return [e.name for e in load_config(path).entities]


def test_a_missing_config_is_created(tmp_path):
    path = tmp_path / "idxr.yaml"
    assert add_kind(path, "item", MODEL, "public.items", "id")
    assert names(path) == ["item"]


@pytest.mark.parametrize(
    "text",
    [
        "# kinds\nentities:\n" + OTHER + "\nembedding:\n  model: deterministic-test\n",
        "entities:\n" + OTHER.replace("\n  ", "\n").lstrip(" ") + "worker:\n  batch_size: 8\n",
        "embedding:\n  model: deterministic-test\nentities:\n" + OTHER,
    ],
)
def test_the_entry_joins_the_entities_list_wherever_it_is(tmp_path, text):
    path = tmp_path / "idxr.yaml"
    path.write_text(text)
    before = load_config(path)
    assert add_kind(path, "item", MODEL, "public.items", "id")
    after = load_config(path)
    assert names(path) == ["other", "item"]
    assert after.model_dump(exclude={"entities"}) == before.model_dump(exclude={"entities"})
    assert path.read_text().startswith(text.split("\n")[0])
    assert not add_kind(path, "item", MODEL, "public.items", "id")  # already there


def test_a_list_it_cannot_extend_is_left_alone_with_the_entry_to_add_by_hand(tmp_path):
    path = tmp_path / "idxr.yaml"
    path.write_text("entities: []\n")
    with pytest.raises(LoadError, match="add it by hand") as raised:
        add_kind(path, "item", MODEL, "public.items", "id")
    assert yaml.safe_load(str(raised.value).split("\n", 1)[1])[0]["name"] == "item"
    assert path.read_text() == "entities: []\n"
