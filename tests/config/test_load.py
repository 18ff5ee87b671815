import pytest

from mmdiag.config import load_config
from mmdiag.errors import ConfigError


def test_overrides_are_typed_and_nested(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("name: a\noptim: {lr: 0.01}\ndata: {batch_size: 8}\n")
    cfg = load_config(f, ["optim.lr=1e-4", "trainer.max_epochs=3", "data.augment.image=[{name: RandomHorizontalFlip}]"])
    assert cfg.optim.lr == 1e-4 and cfg.trainer.max_epochs == 3 and cfg.data.batch_size == 8
    assert cfg.data.augment["image"][0]["name"] == "RandomHorizontalFlip"


def test_unknown_key_is_named_with_the_closest_valid_key(tmp_path):
    f = tmp_path / "exp.yaml"
    f.write_text("optim: {learning_rate: 0.1}\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    msg = str(e.value)
    assert str(f) in msg and "optim.learning_rate" in msg
    with pytest.raises(ConfigError, match="trainer.max_epoch.*did you mean 'trainer.max_epochs'"):
        load_config(None, ["trainer.max_epoch=3"])


def test_bad_values_and_files():
    with pytest.raises(ConfigError, match="optim.lr"):
        load_config(None, ["optim.lr=-1"])
    with pytest.raises(ConfigError, match="fold 5 is out of range"):
        load_config(None, ["data.split.fold=5"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/exp.yaml")
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["optim.lr"])
