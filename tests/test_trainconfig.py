"""fnn.TrainConfig: the compiled epoch's settings as one value. Equal configurations are one
cache key however they are given, settings by keyword override the config's, an unknown
keyword is one line naming the closest one, and fit(config=cfg) is fit(**the same settings)."""

import dataclasses

import jax
import numpy as np
import pytest

import fnn
from fnn.data import datasets
from fnn.training.epoch import make_chunk_fn, make_epoch_fn

LOSS = fnn.get_loss("softmax_cross_entropy")
NET = fnn.MLP((2, 4, 2), "tanh")


def test_equal_settings_are_one_hashable_value():
    a = fnn.TrainConfig(batch_size=np.int64(16), l2=0, dropout=np.float64(0.25), clip_norm=1,
                        noise_multiplier=jax.numpy.asarray(0.5))
    b = fnn.TrainConfig(batch_size=16, l2=0.0, dropout=0.25, clip_norm=1.0, noise_multiplier=0.5)
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert type(a.batch_size) is int and type(a.l2) is float and type(a.noise_multiplier) is float
    assert a != dataclasses.replace(b, l2=1e-4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.l2 = 0.5


@pytest.mark.parametrize("settings,message", [
    (dict(batch_size=0), r"^The batch size must be positive \(an integer\), got 0\.$"),
    (dict(batch_size=2.0), "batch size must be positive"),
    (dict(method="autodif"), r"Unknown gradient method 'autodif' \(did you mean 'autodiff'\?\)"),
    (dict(l2=-1.0), r"^l2 must be a finite number in \[0, ∞\), got -1.0\.$"),
    (dict(dropout=1.0), r"^dropout rate must be a finite number in \[0, 1\)"),
    (dict(clip_norm=0.0), "^clip_norm must be a positive finite number"),
    (dict(clip_norm=1.0, noise_multiplier=-0.5), "^noise_multiplier must be a finite number >= 0"),
    (dict(noise_multiplier=1.0), "^noise_multiplier needs clip_norm"),
    (dict(mesh="cpu"), r"^mesh must be a jax.sharding.Mesh \(fnn.parallel.make_mesh\) or None"),
])
def test_bad_settings_get_the_one_line_messages_of_before(settings, message):
    with pytest.raises(ValueError, match=message) as caught:
        fnn.TrainConfig(**settings)
    assert "\n" not in str(caught.value)
    with pytest.raises(ValueError, match=message):  # the same through replace
        fnn.TrainConfig().replace(**settings)


def test_a_config_and_its_settings_by_keyword_build_the_same_program():
    opt = fnn.get_optimizer("sgd", 0.1)
    cfg = fnn.TrainConfig(batch_size=16, l2=1e-3)
    epoch = make_epoch_fn(NET, LOSS, opt, cfg, donate=False)
    assert make_epoch_fn(NET, LOSS, opt, batch_size=16, l2=0.001, donate=False) is epoch
    assert make_epoch_fn(NET, LOSS, opt, fnn.TrainConfig(l2=1e-3), batch_size=16, donate=False) is epoch
    assert make_epoch_fn(NET, LOSS, opt, cfg, l2=0, donate=False) is not epoch
    assert make_epoch_fn(NET, LOSS, opt, cfg, donate=True) is not epoch
    chunked = make_chunk_fn(NET, LOSS, opt, cfg, chunk=4, donate=False)
    assert make_chunk_fn(NET, LOSS, opt, chunk=4, donate=False, l2=1e-3, batch_size=16) is chunked


def test_settings_by_keyword_override_the_config():
    opt = fnn.get_optimizer("sgd", 0.1)
    cfg = fnn.TrainConfig(batch_size=16, l2=1e-3, dropout=0.1)
    # Only the given fields change: dropout stays the config's.
    assert make_epoch_fn(NET, LOSS, opt, cfg, l2=0.5) is make_epoch_fn(NET, LOSS, opt, cfg.replace(l2=0.5))
    assert cfg.replace(l2=0.5) == fnn.TrainConfig(batch_size=16, l2=0.5, dropout=0.1)
    with pytest.raises(ValueError, match="l2 must be"):
        make_epoch_fn(NET, LOSS, opt, cfg, l2=-1.0)


@pytest.mark.parametrize("call,message", [
    (lambda: make_epoch_fn(NET, LOSS, fnn.get_optimizer(), batchsize=16),
     "make_epoch_fn() got an unexpected keyword argument 'batchsize'; did you mean 'batch_size'? "
     "(the settings are the fields of fnn.TrainConfig)"),
    (lambda: make_chunk_fn(NET, LOSS, fnn.get_optimizer(), chunk=2, clipnorm=1.0),
     "make_chunk_fn() got an unexpected keyword argument 'clipnorm'; did you mean 'clip_norm'? "
     "(the settings are the fields of fnn.TrainConfig)"),
    (lambda: fnn.TrainConfig().replace(drop_out=0.1),
     "TrainConfig.replace() got an unexpected keyword argument 'drop_out'; did you mean 'dropout'? "
     "(the settings are the fields of fnn.TrainConfig)"),
    (lambda: fnn.gradient_descent(NET, LOSS, fnn.init(jax.random.key(0), NET), np.zeros((4, 2), np.float32),
                                  np.zeros(4, int), learning_rate=0.1, methods="manual"),
     "gradient_descent() got an unexpected keyword argument 'methods'; did you mean 'method'? "
     "(the settings are the objective's method and l2)"),
    (lambda: fnn.TrainConfig(batchsize=64),
     "TrainConfig() got an unexpected keyword argument 'batchsize'; did you mean 'batch_size'? "
     "(the settings are the fields of fnn.TrainConfig)"),
    (lambda: fnn.TrainConfig().replace(lr=0.1),  # nothing close: no guess
     "TrainConfig.replace() got an unexpected keyword argument 'lr' (the settings are the fields of fnn.TrainConfig)"),
])
def test_an_unknown_keyword_is_one_line_naming_the_closest(call, message):
    with pytest.raises(TypeError) as caught:
        call()
    assert str(caught.value) == message


def test_fit_names_the_closest_of_its_keywords_and_wants_a_config():
    d = datasets.xor()
    params = fnn.init(jax.random.key(0), NET)
    run = lambda **kw: fnn.fit(NET, LOSS, params, d.x_train, d.y_train, key=jax.random.key(1), **kw)
    with pytest.raises(TypeError, match=r"^fit\(\) got an unexpected keyword argument 'epoch'; did you mean "
                                        r"'epochs'\? \(the settings are the fields of fnn.TrainConfig and fit's "):
        run(epoch=3)
    with pytest.raises(TypeError, match=r"^fit\(\): config must be a fnn.TrainConfig, got dict\.$"):
        run(config={"batch_size": 16})


def test_fit_with_a_config_is_fit_with_the_same_settings_bit_for_bit():
    d = datasets.xor()
    params = fnn.init(jax.random.key(0), NET)
    opt = fnn.get_optimizer("momentum", 0.1)
    common = dict(key=jax.random.key(1), optimizer=opt, epochs=2, test=(d.x_test, d.y_test))
    settings = dict(batch_size=16, l2=1e-3, dropout=0.1)
    by_keyword = fnn.fit(NET, LOSS, params, d.x_train, d.y_train, **common, **settings)
    by_config = fnn.fit(NET, LOSS, params, d.x_train, d.y_train, **common, config=fnn.TrainConfig(**settings))
    # A keyword overrides the config's value: the same run again.
    overridden = fnn.fit(NET, LOSS, params, d.x_train, d.y_train, **common,
                         config=fnn.TrainConfig(**{**settings, "l2": 0.5}), l2=1e-3)
    for other in (by_config, overridden):
        for a, b in zip(jax.tree.leaves(by_keyword[0]), jax.tree.leaves(other[0])):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert other[1] == by_keyword[1]
    assert len(by_keyword[1]["epoch"]) == 2
