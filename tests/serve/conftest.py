"""The text server tests' app: the built-in text model loaded once per module."""

import pytest

from mdiff.serve.app import Models, ServeConfig, create_app
from mdiff.serve.limits import Limits


@pytest.fixture(scope="module")
def models(home):
    m = Models(ServeConfig(home=str(home)))
    m.text()
    return m


@pytest.fixture
def make_app(models, home):
    """``make_app(limits={...}, **ServeConfig fields)``: an app over the module's models."""

    def make(**kw):
        limits = Limits(**kw.pop("limits", {}))
        config = ServeConfig(home=str(home), limits=limits, **kw)
        models.config = config
        return create_app(config, models=models)

    return make
