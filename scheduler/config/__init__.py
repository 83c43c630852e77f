"""Settings: defaults, then ``config.json``, then environment variables, then overrides; validated once.

Every setting is one line of the ``Settings`` class (``settings``): its type, default, kind of value (how
it is read from text or JSON, and what is allowed) and meaning. The config key is the attribute name under
``app.`` (``redis.`` for the ``redis_*`` ones) and the environment variable is the key upper-cased with
``_`` for ``.``: ``worker_pool_size`` is ``app.worker_pool_size`` and ``APP_WORKER_POOL_SIZE``.
docs/CONFIGURATION.md and configs/config.example.json are generated from the same table (``docs``) and a
test keeps them in step.

Modules: ``settings`` (the table), ``load`` (``load_settings``), ``kinds`` (reading and showing values),
``addresses`` (host:port, the Go MySQL DSN), ``redaction`` (secrets), ``durations`` (Go duration text),
``docs``.
"""
