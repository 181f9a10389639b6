"""The TOML config file, validated once into typed values (``Config``).

One module per part of the file: ``controller.py`` (``[controller]``:
OpenFlow's listener, limits and TLS), ``api.py`` (``[api]``), ``store.py``
(``[store]``, ``[cluster]``), ``bridges.py`` (``[[bridge]]``,
``[[mapping]]``), field parsers they share in ``fields.py``, and
``loader.py``, which reads the file, checks the sections against each
other and reports every problem at once (``ConfigError``). ``[lisp]`` and
``[[site]]`` are the control plane's, in ``lisp/config.py``.

This package's face is what the rest of the code imports from it.
"""
from lisp_controller.config.api import TOKEN_ENV, ApiSettings
from lisp_controller.config.controller import OpenFlowTls
from lisp_controller.config.loader import Config, ConfigError, load_config, parse_config
from lisp_controller.config.store import ETCD_PASSWORD_ENV, ClusterSettings, EtcdSettings, url_problem

__all__ = ["ApiSettings", "ClusterSettings", "Config", "ConfigError", "ETCD_PASSWORD_ENV", "EtcdSettings",
           "OpenFlowTls", "TOKEN_ENV", "load_config", "parse_config", "url_problem"]
