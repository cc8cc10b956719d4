"""Tests for bsm_ray.config: strict dataclass loading, `--set` overrides, YAML, flatten.

The dataclasses live at module level: `get_type_hints` resolves the (string) annotations of
this module against its globals.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

import pytest
import yaml

from bsm_ray.config import (
    apply_overrides,
    dump_yaml,
    flatten,
    from_dict,
    load_config,
    to_dict,
)
from bsm_ray.errors import BsmRayError, ConfigError


@dataclass
class Optim:
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    schedule: Literal["cosine", "linear", "constant"] = "cosine"


@dataclass
class Source:
    path: str
    weight: float = 1.0
    modality: Literal["dna", "rna", "protein"] = "dna"


@dataclass
class Model:
    name: str = "bsm-small"
    layers: int = 4
    dropout: Optional[float] = None  # noqa: UP045 (the typing.Optional spelling is tested)
    seed: int | None = None


@dataclass
class Train:
    run_name: str  # required
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    sources: list[Source] = field(default_factory=list)
    mix: dict[str, float] = field(default_factory=dict)
    tags: Sequence[str] = ()
    shape: tuple[int, str] = (1, "a")
    dims: tuple[int, ...] = ()
    use_flash: bool = False
    extra: Any = None


@dataclass
class Validated:
    steps: int = 1

    def __post_init__(self) -> None:
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")


@dataclass
class WithInitFalse:
    a: int = 1
    derived: int = field(init=False, default=0)


# ===========================================================================================
# from_dict
# ===========================================================================================


def test_from_dict_builds_nested_tree() -> None:
    cfg = from_dict(
        Train,
        {
            "run_name": "r1",
            "model": {"layers": 8, "dropout": 0.1},
            "optim": {"lr": 3e-4, "schedule": "linear"},
            "sources": [{"path": "a.fa"}, {"path": "b.fa", "weight": 2, "modality": "protein"}],
            "mix": {"dna": 0.5, "protein": 1},
            "use_flash": True,
        },
    )
    assert cfg.run_name == "r1"
    assert cfg.model == Model(layers=8, dropout=0.1)
    assert cfg.optim == Optim(lr=3e-4, schedule="linear")
    assert cfg.sources == [Source("a.fa"), Source("b.fa", 2.0, "protein")]
    assert all(isinstance(s, Source) for s in cfg.sources)
    assert cfg.mix == {"dna": 0.5, "protein": 1.0}
    assert cfg.use_flash is True


def test_from_dict_defaults() -> None:
    cfg = from_dict(Train, {"run_name": "r"})
    assert cfg == Train(run_name="r")
    assert cfg.model is not Train(run_name="r").model  # default_factory: fresh each time


def test_float_field_accepts_int_and_converts() -> None:
    cfg = from_dict(Train, {"run_name": "r", "optim": {"lr": 1, "betas": [1, 0.5]}})
    assert cfg.optim.lr == 1.0 and type(cfg.optim.lr) is float
    assert cfg.optim.betas == [1.0, 0.5]
    assert all(type(b) is float for b in cfg.optim.betas)
    assert type(from_dict(Train, {"run_name": "r", "mix": {"a": 2}}).mix["a"]) is float


@pytest.mark.parametrize(
    ("data", "path_in_message"),
    [
        ({"run_name": 3}, "run_name"),
        ({"run_name": "r", "model": {"layers": "four"}}, "model.layers"),
        ({"run_name": "r", "model": {"layers": 4.0}}, "model.layers"),
        ({"run_name": "r", "model": {"layers": True}}, "model.layers"),
        ({"run_name": "r", "optim": {"lr": "fast"}}, "optim.lr"),
        ({"run_name": "r", "optim": {"lr": True}}, "optim.lr"),
        ({"run_name": "r", "optim": {"betas": 0.9}}, "optim.betas"),
        ({"run_name": "r", "optim": {"betas": [0.9, "x"]}}, "optim.betas[1]"),
        ({"run_name": "r", "optim": {"schedule": "step"}}, "optim.schedule"),
        ({"run_name": "r", "sources": [{"path": "a"}, {"path": 5}]}, "sources[1].path"),
        ({"run_name": "r", "sources": [{"path": "a", "modality": "DNA"}]}, "sources[0].modality"),
        ({"run_name": "r", "sources": {"path": "a"}}, "sources"),
        ({"run_name": "r", "sources": ["a.fa"]}, "sources[0]"),
        ({"run_name": "r", "mix": {"dna": "half"}}, "mix.dna"),
        ({"run_name": "r", "mix": {1: 0.5}}, "mix.<key>"),
        ({"run_name": "r", "mix": [0.5]}, "mix"),
        ({"run_name": "r", "model": "big"}, "model"),
        ({"run_name": "r", "model": {"dropout": "x"}}, "model.dropout"),
        ({"run_name": "r", "model": {"seed": 1.5}}, "model.seed"),
        ({"run_name": "r", "use_flash": "yes"}, "use_flash"),
        ({"run_name": "r", "use_flash": 1}, "use_flash"),
        ({"run_name": "r", "tags": "abc"}, "tags"),
        ({"run_name": "r", "tags": ["a", 1]}, "tags[1]"),
        ({"run_name": "r", "shape": [1, 2]}, "shape[1]"),
        ({"run_name": "r", "shape": [1]}, "shape"),
        ({"run_name": "r", "dims": [1, "x"]}, "dims[1]"),
    ],
)
def test_wrong_type_names_dotted_path(data: dict, path_in_message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Train, data)
    assert str(info.value).startswith(f"{path_in_message}:"), str(info.value)


def test_config_error_is_a_bsm_ray_error() -> None:
    assert issubclass(ConfigError, BsmRayError)


def test_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        from_dict(Train, {"run_name": "r", "optim": {"lr": 0.1, "learning_rate": 0.1}})
    msg = str(info.value)
    assert msg.startswith("optim:")
    assert "learning_rate" in msg
    assert "['betas', 'lr', 'schedule']" in msg


def test_unknown_top_level_key_names_the_class() -> None:
    with pytest.raises(ConfigError, match=r"^Train: unknown key\(s\) \['bogus'\]") as info:
        from_dict(Train, {"run_name": "r", "bogus": 1})
    assert "run_name" in str(info.value) and "sources" in str(info.value)


def test_unknown_key_inside_list_item() -> None:
    with pytest.raises(ConfigError, match=r"^sources\[0\]: unknown key\(s\) \['wieght'\]"):
        from_dict(Train, {"run_name": "r", "sources": [{"path": "a", "wieght": 2}]})


def test_required_missing_field() -> None:
    with pytest.raises(ConfigError, match="^run_name: required and not given"):
        from_dict(Train, {})
    with pytest.raises(ConfigError, match=r"^sources\[0\]\.path: required and not given"):
        from_dict(Train, {"run_name": "r", "sources": [{"weight": 1.0}]})


def test_optional_accepts_none_and_value() -> None:
    assert from_dict(Model, {"dropout": None, "seed": None}) == Model()
    cfg = from_dict(Model, {"dropout": 0, "seed": 7})
    assert cfg.dropout == 0.0 and type(cfg.dropout) is float
    assert cfg.seed == 7


def test_none_for_non_optional_field_raises() -> None:
    with pytest.raises(ConfigError, match="^model.layers:"):
        from_dict(Train, {"run_name": "r", "model": {"layers": None}})


def test_sequence_and_tuple_annotations() -> None:
    cfg = from_dict(Train, {"run_name": "r", "tags": ["a", "b"], "shape": [2, "x"], "dims": [3]})
    assert list(cfg.tags) == ["a", "b"]
    assert cfg.shape == (2, "x")
    assert cfg.dims == (3,)


def test_any_field_takes_anything() -> None:
    cfg = from_dict(Train, {"run_name": "r", "extra": {"x": [1, "y"]}})
    assert cfg.extra == {"x": [1, "y"]}


def test_existing_dataclass_instance_is_accepted() -> None:
    model = Model(layers=12)
    assert from_dict(Train, {"run_name": "r", "model": model}).model is model


def test_post_init_error_becomes_config_error() -> None:
    with pytest.raises(ConfigError, match="steps must be positive"):
        from_dict(Validated, {"steps": 0})


def test_init_false_field_is_not_a_key() -> None:
    assert from_dict(WithInitFalse, {"a": 2}).a == 2
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(WithInitFalse, {"derived": 3})


def test_config_is_picklable() -> None:
    cfg = from_dict(Train, {"run_name": "r", "sources": [{"path": "a"}]})
    assert pickle.loads(pickle.dumps(cfg)) == cfg


# ===========================================================================================
# overrides
# ===========================================================================================


def test_apply_overrides_parses_yaml_scalars_and_lists() -> None:
    data: dict = {"model": {"layers": 4}}
    out = apply_overrides(
        data,
        [
            "model.layers=3",
            "optim.lr=0.1",
            "use_flash=true",
            "optim.betas=[0.8, 0.9]",
            "run_name=my run",
            "model.dropout=null",
            "tags=",
        ],
    )
    assert out is data
    assert data == {
        "model": {"layers": 3, "dropout": None},
        "optim": {"lr": 0.1, "betas": [0.8, 0.9]},
        "use_flash": True,
        "run_name": "my run",
        "tags": "",
    }


def test_apply_overrides_value_may_contain_equals() -> None:
    assert apply_overrides({}, ["run_name=a=b"]) == {"run_name": "a=b"}


def test_apply_overrides_later_wins() -> None:
    assert apply_overrides({}, ["a.b=1", "a.b=2"]) == {"a": {"b": 2}}


def test_apply_overrides_creates_missing_and_null_sections() -> None:
    assert apply_overrides({"a": None}, ["a.b.c=1"]) == {"a": {"b": {"c": 1}}}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("1e-3", 1e-3), ("3E4", 3e4), ("-2e-5", -2e-5), ("1.0e3", 1e3), (".5e1", 5.0)],
)
def test_apply_overrides_exponent_floats(raw: str, expected: float) -> None:
    # PyYAML alone reads "1e-3" as a string (YAML 1.1), which a float field then rejected.
    value = apply_overrides({}, [f"lr={raw}"])["lr"]
    assert isinstance(value, float) and value == pytest.approx(expected)


@pytest.mark.parametrize("raw", ["e5", "1e", "abc", "1e-3x"])
def test_apply_overrides_non_numbers_stay_strings(raw: str) -> None:
    assert apply_overrides({}, [f"x={raw}"])["x"] == raw


def test_apply_overrides_without_equals_raises() -> None:
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["model.layers"])


def test_apply_overrides_through_a_scalar_raises() -> None:
    with pytest.raises(ConfigError, match="'layers' is not a section"):
        apply_overrides({"model": {"layers": 4}}, ["model.layers.x=1"])


def test_apply_overrides_invalid_yaml_raises_config_error() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        apply_overrides({}, ["optim.betas=[0.9, 0.95"])


# ===========================================================================================
# load_config
# ===========================================================================================

YAML_TEXT = """\
run_name: exp1
model:
  layers: 6
  dropout: 0.1
optim:
  lr: 2e-4
  betas: [0.9, 0.98]
sources:
  - path: data/a.fa.gz
    weight: 2
  - path: data/b.fa
    modality: protein
mix:
  dna: 1
  protein: 0.25
"""


def test_load_config_from_yaml_file(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(YAML_TEXT)
    cfg = load_config(Train, path)
    assert cfg.run_name == "exp1"
    assert cfg.model == Model(layers=6, dropout=0.1)
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.optim.betas == [0.9, 0.98]
    assert cfg.sources == [Source("data/a.fa.gz", 2.0), Source("data/b.fa", 1.0, "protein")]
    assert cfg.mix == {"dna": 1.0, "protein": 0.25}
    assert load_config(Train, str(path)) == cfg  # str path works too


def test_load_config_with_overrides(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(YAML_TEXT)
    overrides = ["model.layers=3", "optim.betas=[0.5, 0.6]", "optim.lr=5e-5", "use_flash=yes"]
    cfg = load_config(Train, path, overrides)
    assert cfg.model.layers == 3
    assert cfg.model.dropout == 0.1  # untouched siblings survive
    assert cfg.optim.betas == [0.5, 0.6]
    assert cfg.optim.lr == pytest.approx(5e-5)
    assert cfg.use_flash is True  # YAML 1.1 "yes"


def test_load_config_without_file_uses_defaults_and_overrides() -> None:
    cfg = load_config(Train, None, ["run_name=x", "model.layers=2"])
    assert cfg == Train(run_name="x", model=Model(layers=2))
    with pytest.raises(ConfigError, match="run_name: required"):
        load_config(Train)


def test_load_config_override_with_wrong_type_names_path(tmp_path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text(YAML_TEXT)
    with pytest.raises(ConfigError, match="^model.layers: expected an integer"):
        load_config(Train, path, ["model.layers=many"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(Train, path, ["model.depth=3"])


def test_load_config_empty_file_gives_defaults(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("# nothing here\n")
    assert load_config(Model, path) == Model()


def test_load_config_missing_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Train, tmp_path / "nope.yaml")


def test_load_config_invalid_yaml(tmp_path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("model: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Train, path)


def test_load_config_top_level_must_be_mapping(tmp_path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Train, path)


# ===========================================================================================
# to_dict / flatten / dump_yaml
# ===========================================================================================


def test_flatten_gives_dotted_keys() -> None:
    nested = {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": "x", "f": {"g": None}}
    assert flatten(nested) == {"a.b.c": 1, "a.d": [1, 2], "e": "x", "f.g": None}
    assert flatten({}) == {}
    assert flatten({"a": 1}, prefix="cfg.") == {"cfg.a": 1}


def test_flatten_of_config() -> None:
    cfg = Train(run_name="r", sources=[Source("a")], mix={"dna": 0.5})
    flat = flatten(to_dict(cfg))
    assert flat["run_name"] == "r"
    assert flat["model.layers"] == 4
    assert flat["optim.lr"] == 1e-3
    assert flat["optim.betas"] == [0.9, 0.95]
    assert flat["mix.dna"] == 0.5
    assert flat["sources"] == [{"path": "a", "weight": 1.0, "modality": "dna"}]
    assert all(not isinstance(v, dict) for v in flat.values())


def test_to_dict_and_dump_yaml_round_trip(tmp_path) -> None:
    cfg = Train(
        run_name="r",
        model=Model(layers=2, dropout=0.5),
        sources=[Source("a", 2.0, "rna")],
        mix={"dna": 1.0},
    )
    data = to_dict(cfg)
    assert data["model"] == {"name": "bsm-small", "layers": 2, "dropout": 0.5, "seed": None}
    text = dump_yaml(cfg)
    assert list(yaml.safe_load(text))[:3] == ["run_name", "model", "optim"]  # field order kept
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    loaded = load_config(Train, path)
    assert loaded == dataclasses.replace(cfg, tags=[])  # a Sequence field loads as a list
    assert loaded.shape == (1, "a") and loaded.dims == ()  # tuples come back as tuples
