"""Accolade settings.

Everything that differs between a laptop and a deployment comes from the
environment (see project/env.py for the readers and README for the list).
With REDIS_URL unset the site runs embedded: SQLite, an in-memory channel
layer and evaluation in a background thread of the web process, so a fresh
machine needs nothing but Python.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from project.env import (
    database_config,
    env_addresses,
    env_bool,
    env_choice,
    env_identifier,
    env_int,
    env_ints,
    env_list,
    env_networks,
    env_rate,
    env_str,
    redis_urls,
)

BASE_DIR = Path(__file__).resolve().parent.parent
# psycopg's prepare_threshold: a statement is prepared after this many runs
# on a connection, or at once when executed with prepare=True.
PREPARE_ONLY_WHEN_ASKED = 2**31 - 1

DEBUG = env_bool("DEBUG", False)

_secret_key = env_str("SECRET_KEY")
if not _secret_key:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SECRET_KEY is not set. Set it to a long random string, "
            "or set DEBUG=1 for local development."
        )
    _secret_key = "django-insecure-accolade-development-only"
SECRET_KEY = _secret_key

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])
# The proxies in front of the web processes, by address or network
# ("127.0.0.1,10.0.0.0/8"). A request (or socket) arriving from one of them is
# taken to come from the last address its X-Forwarded-For names that is not
# one of them, and its X-Forwarded-Proto is believed. Unset, none is trusted:
# every request's address is its connection's, whatever headers it sends, so a
# client cannot choose the address that log-in lock-outs and rate limits count.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")

# Transport security. Production runs behind a TLS-terminating proxy that sets
# X-Forwarded-Proto (and strips it from clients); everything defaults to on
# outside DEBUG and can be turned off for plain-HTTP setups such as the test
# topology on loopback.
# With TRUSTED_PROXIES set, the proxy middleware already takes the scheme from
# X-Forwarded-Proto, from those proxies only, so Django does not read it.
SECURE_PROXY_SSL_HEADER = (
    ("HTTP_X_FORWARDED_PROTO", "https")
    if env_bool("TRUST_X_FORWARDED_PROTO", not DEBUG) and not TRUSTED_PROXIES
    else None
)
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", not DEBUG)
# Load balancers probe over plain HTTP inside the network; a redirect is not an answer.
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = env_bool("SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_HTTPONLY = True  # pages send the token from the template, never from the cookie
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0 if DEBUG else 31_536_000)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", True)
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"

# Used as the Celery queue name, the cache key prefix and the channel-layer
# prefix, so two deployments (or a test run) can share one Redis safely.
ACCOLADE_NAMESPACE = env_identifier("ACCOLADE_NAMESPACE", "accolade")

INSTALLED_APPS = [
    # daphne first: its runserver replaces Django's, serving HTTP and
    # WebSockets from one process.
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "channels",
    "django_celery_results",
    "django_htmx",
    "template_partials",
    "achievements",
    "accounts",
    "api",
    "credentials",
    "webhooks",
    "ingest",
    "feed",
    # The example producer: how a host application plugs into Accolade.
    "examples.places",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "project.middleware.ContentSecurityPolicyMiddleware",
    "project.middleware.RefuseNulCharactersMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language: the browser's Accept-Language, then the user's own setting
    # (accounts.middleware.UserLanguageMiddleware, after authentication).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "accounts.middleware.UserLanguageMiddleware",
    "accounts.lockout.KnownBrowserMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: it turns a locked-out log-in into its answer.
    "axes.middleware.AxesMiddleware",
]

# The web process's HTTP handler: "django", Django's own ASGIHandler, or
# "one-hop" (project/handlers.py), which runs each request's middleware and
# view in one trip to a thread kept between requests and sends API requests
# through API_MIDDLEWARE. It leans on Django's private handler API, pinned to
# this Django by tests/test_handler_contract.py; the cost each way:
# docs/performance.md.
WEB_HTTP_HANDLER = env_choice("WEB_HTTP_HANDLER", "django", ["DJANGO", "ONE-HOP"]).lower()
# Under the one-hop handler, requests under API_PREFIX go through
# API_MIDDLEWARE instead of MIDDLEWARE. The API answers bearer keys with JSON:
# it reads no session, user, CSRF token, message or htmx header, so those
# middleware only cost it time. A path, starting and ending with "/".
API_PREFIX = "/api/"
API_MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "project.middleware.ContentSecurityPolicyMiddleware",
    "django.middleware.common.CommonMiddleware",
]

ROOT_URLCONF = "project.urls"
ASGI_APPLICATION = "project.asgi.application"
# The web process's garbage-collector thresholds (Python's own are 700,10,10);
# see project/gc_tuning.py for why a process holding thousands of sockets
# collects less often.
WEB_GC_THRESHOLDS = env_ints("WEB_GC_THRESHOLDS", (5_000, 10, 100), minimum=1)
# HTTP requests a web process runs at once, each on a thread kept between
# requests (project/handlers.py's RequestThreads, under the one-hop handler);
# more wait their turn on the event loop. WebSockets are not counted. Keep it
# below DATABASE_POOL_SIZE.
WEB_REQUEST_THREADS = env_int("WEB_REQUEST_THREADS", 8, minimum=1)
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "achievements.context_processors.live",
            ],
            "builtins": ["template_partials.templatetags.partials"],
        },
    },
]

DATABASES = {"default": database_config("DATABASE_URL", f"sqlite:///{BASE_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The embedded mode writes from request threads and the evaluation thread
    # at once: WAL lets readers proceed during a write, IMMEDIATE takes the
    # write lock up front instead of failing on upgrade, and the timeout waits
    # for it rather than raising "database is locked".
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
else:
    # A pool of connections per process. Under ASGI every request and socket
    # connect runs in a thread of its own, and without a pool each opened its
    # own connection: 200 concurrent API requests ran PostgreSQL out of
    # connections (half of them failed), and opening one was most of a socket
    # connect's cost. Requests now wait briefly for a pooled connection.
    DATABASES["default"]["CONN_MAX_AGE"] = 0  # the pool keeps them; Django requires 0
    # A connection is checked as it leaves the pool, so one that died with a
    # PostgreSQL restart is replaced, not handed to a request or a task to
    # fail on. Django's check (CONN_HEALTH_CHECKS) is an empty query every
    # time; this backend's costs no round trip on a healthy connection.
    DATABASES["default"]["ENGINE"] = "project.postgresql"
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = False
    DATABASES["default"]["OPTIONS"] = {
        "pool": {
            "min_size": 1,
            "max_size": env_int("DATABASE_POOL_SIZE", 20, minimum=1),
            "timeout": 10,
        },
        # Statements the engine marks (achievements.db.server_cursor(prepare=
        # True): ingestion's one-statement insert) are prepared, so PostgreSQL
        # plans them once per connection: planning was two thirds of the
        # backend's CPU for that insert (420 -> 200 us). No other statement is
        # prepared: with psycopg preparing every statement after five runs, a
        # replay's first run (its awards) took 174 s against 150 (one run
        # each). None turns preparing off altogether (a pooler without
        # prepared statements).
        "prepare_threshold": (
            PREPARE_ONLY_WHEN_ASKED if env_bool("DATABASE_PREPARED_STATEMENTS", True) else None
        ),
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

_redis = redis_urls("REDIS_URL")
ACCOLADE_EMBEDDED = _redis is None
# One URL per role (broker, cache, channels); None in the embedded mode.
ACCOLADE_REDIS = _redis
# How recorded events reach the evaluator: "celery" (a worker, through the
# broker), "thread" (a background thread of this process; the embedded mode)
# or "sync" (inline after commit, before the request answers: tests, and
# bench/request_cost.py's naive design).
ACCOLADE_TASK_MODE = env_choice(
    "ACCOLADE_TASK_MODE", "thread" if ACCOLADE_EMBEDDED else "celery", ["CELERY", "THREAD", "SYNC"]
).lower()
# Events evaluated per transaction by a Celery worker under a backlog
# (achievements.batch; bench/throughput.py measures the choice);
# 1 evaluates each event in a task of its own.
ACCOLADE_EVALUATION_BATCH_SIZE = env_int("ACCOLADE_EVALUATION_BATCH_SIZE", 2000, minimum=1)

CACHES: dict[str, dict[str, Any]]
CHANNEL_LAYERS: dict[str, dict[str, Any]]
if _redis is None:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels.layers.InMemoryChannelLayer",
            # Every push of the process goes through one channel (the sockets'
            # hub, achievements.hub.SocketHub), and the layer silently drops
            # what is over capacity (100 by default): room for a batch's users.
            "CONFIG": {"capacity": 10_000},
        }
    }
    # No broker: tasks run in a background thread of the process that
    # recorded the event (see achievements.dispatch.enqueue_evaluation).
    CELERY_BROKER_URL = "memory://"
    CELERY_TASK_ALWAYS_EAGER = True
else:
    CACHES = {
        "default": {
            "BACKEND": "project.cache.SharedRedisCache",
            "LOCATION": _redis["cache"],
            "KEY_PREFIX": ACCOLADE_NAMESPACE,
            # Requests wait on it (the rate limit, the drain request): a hung
            # Redis should cost them 2 s, as the metrics client, not redis-py's 5.
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                # redis-py 8 gives sockets a 5 s timeout by default, which
                # breaks the layer's blocking receive (channels_redis#422), and
                # caps the pool at 100 connections; both are lifted here.
                "hosts": [
                    {
                        "address": _redis["channels"],
                        "socket_timeout": None,
                        "max_connections": env_int(
                            "CHANNEL_LAYER_MAX_CONNECTIONS", 1000, minimum=1
                        ),
                    }
                ],
                "prefix": f"{ACCOLADE_NAMESPACE}:asgi",
                # A Daphne process's sockets are fed through one channel (the
                # socket hub: one message per user with a socket there), and
                # overflow is dropped silently, so it is sized well above the
                # default of 100.
                "capacity": env_int("CHANNEL_LAYER_CAPACITY", 1500, minimum=1),
                "expiry": 60,
                # A membership lapses when this runs out (a day is the layer's
                # default); the socket hub renews its memberships every hour.
                "group_expiry": 86400,
            },
        }
    }
    if env_str("CHANNEL_LAYER", "pubsub") == "pubsub":
        # The default. Redis pub/sub: a group send is one PUBLISH, received by
        # each web process holding a socket of that user, where the list-based
        # layer above queues and pops one message per process and user
        # (bench/connections.py compares the two). Both are at-most-once;
        # pages catch up on connect.
        CHANNEL_LAYERS = {
            "default": {
                "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                "CONFIG": {
                    "hosts": [{"address": _redis["channels"], "socket_timeout": None}],
                    "prefix": f"{ACCOLADE_NAMESPACE}:asgi",
                },
            }
        }
    CELERY_BROKER_URL = _redis["broker"]
    # The stock Redis transport with a fix for a worker crash on broker loss;
    # see achievements/broker.py.
    CELERY_BROKER_TRANSPORT = "achievements.broker:Transport"

# Celery. Evaluation must survive a worker dying mid-task: acknowledge only
# after the task ran, and hand the message back if the worker process is lost.
# The task itself is idempotent per event (see achievements.actions).
CELERY_TASK_DEFAULT_QUEUE = ACCOLADE_NAMESPACE
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 4
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 3600}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_BACKEND = "django-db"
# Celery's Django fix-up closes every database connection before and after
# each task, and with a pool in a prefork child it closes the whole pool: each
# task then opened a new PostgreSQL connection to a backend with cold caches,
# 20-30 ms of a one-event evaluation. Past this many tasks it still does; in
# between, achievements.tasks hands the connection back to the pool after each
# task (and drops one that broke), as Django does after a request.
CELERY_DB_REUSE_MAX = 10_000
# The sweeper hands on events whose task message was lost (see
# achievements.dispatch.sweep_stranded_events); celery beat runs it. A sweep
# is one indexed read and at most one drain message, so it can run often.
ACCOLADE_SWEEP_INTERVAL_SECONDS = env_int("ACCOLADE_SWEEP_INTERVAL_SECONDS", 10, minimum=1)
# How often the expiry schedule runs: how late an expired badge may still show
# as held (its card says expired from the expiry time on) and be earned again.
ACCOLADE_EXPIRY_INTERVAL_SECONDS = env_int("ACCOLADE_EXPIRY_INTERVAL_SECONDS", 60, minimum=1)
CELERY_BEAT_SCHEDULE = {
    "sweep-stranded-events": {
        "task": "achievements.sweep_stranded_events",
        "schedule": float(ACCOLADE_SWEEP_INTERVAL_SECONDS),
    },
    # Badges that expire: ended at their expiry time however late this runs.
    "expire-badges": {
        "task": "achievements.expire_badges",
        "schedule": float(ACCOLADE_EXPIRY_INTERVAL_SECONDS),
    },
    # Reports read closed days from roll-ups; a day closes an hour after midnight.
    "rollup-activity": {
        "task": "achievements.rollup_activity",
        "schedule": 3600.0,
    },
}

# Failure handling. An event whose evaluation keeps failing is retried with
# exponential backoff, then dead-lettered for staff to inspect and re-drive.
ACCOLADE_MAX_ATTEMPTS = env_int("ACCOLADE_MAX_ATTEMPTS", 5, minimum=1)
ACCOLADE_RETRY_BASE_SECONDS = env_int("ACCOLADE_RETRY_BASE_SECONDS", 2, minimum=0)
ACCOLADE_RETRY_MAX_SECONDS = env_int("ACCOLADE_RETRY_MAX_SECONDS", 300, minimum=0)
# Unprocessed events older than this, with no retry pending, count as stranded.
ACCOLADE_SWEEP_AGE_SECONDS = env_int("ACCOLADE_SWEEP_AGE_SECONDS", 30, minimum=1)
# Re-evaluation jobs replay at most this many events a second (0: no cap), so
# live evaluation keeps the worker while they run.
ACCOLADE_REEVALUATION_MAX_EVENTS_PER_SECOND = env_int(
    "ACCOLADE_REEVALUATION_MAX_EVENTS_PER_SECOND", 2000, minimum=0
)
CELERY_RESULT_EXTENDED = True
CELERY_TIMEZONE = "UTC"

# Webhooks out (webhooks/). Their tasks run on a queue of their own, which the
# Procfile's `webhooks` worker consumes, so a slow receiver never holds up
# evaluation. Endpoints on loopback, private or link-local addresses are
# refused unless this is on (a receiver inside the network; the tests').
ACCOLADE_WEBHOOK_QUEUE = f"{ACCOLADE_NAMESPACE}.webhooks"
CELERY_TASK_ROUTES = {"webhooks.*": {"queue": ACCOLADE_WEBHOOK_QUEUE}}
ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES = env_bool(
    "ACCOLADE_WEBHOOK_ALLOW_PRIVATE_ADDRESSES", False
)
# An endpoint whose every try has failed for this long is turned off (its
# messages wait for it) and staff are told.
ACCOLADE_WEBHOOK_DISABLE_AFTER_HOURS = env_int(
    "ACCOLADE_WEBHOOK_DISABLE_AFTER_HOURS", 24, minimum=1
)
# Requests a sender has in flight to one endpoint at once (one at a time while
# it fails): a receiver that takes 100 ms to answer still takes 80 a second.
ACCOLADE_WEBHOOK_MAX_IN_FLIGHT = env_int("ACCOLADE_WEBHOOK_MAX_IN_FLIGHT", 8, minimum=1)
# How often retries that have come due are sent.
ACCOLADE_WEBHOOK_SWEEP_SECONDS = env_int("ACCOLADE_WEBHOOK_SWEEP_SECONDS", 5, minimum=1)
CELERY_BEAT_SCHEDULE["send-due-webhooks"] = {
    "task": "webhooks.send_due",
    "schedule": float(ACCOLADE_WEBHOOK_SWEEP_SECONDS),
}

# The event stream in (ingest/, the Procfile's `ingest`): a NATS JetStream
# stream of event documents on <prefix>.<producer>[.<partition>], read by a
# durable consumer (docs/integrations.md).
ACCOLADE_NATS_SERVERS = env_list("NATS_URL", ["nats://127.0.0.1:4222"])
ACCOLADE_INGEST_STREAM = env_str("ACCOLADE_INGEST_STREAM") or "ACCOLADE_EVENTS"
ACCOLADE_INGEST_PREFIX = env_str("ACCOLADE_INGEST_PREFIX") or "accolade.events"
ACCOLADE_INGEST_DURABLE = env_str("ACCOLADE_INGEST_DURABLE") or "accolade-ingest"
ACCOLADE_INGEST_BATCH = env_int("ACCOLADE_INGEST_BATCH", 500, minimum=1)
# A message taken and not acknowledged within this long (its consumer died)
# is handed out again.
ACCOLADE_INGEST_ACK_WAIT_SECONDS = env_int("ACCOLADE_INGEST_ACK_WAIT_SECONDS", 10, minimum=1)
# How long the stream keeps messages (it is also a log to replay from).
ACCOLADE_INGEST_STREAM_MAX_AGE_DAYS = env_int("ACCOLADE_INGEST_STREAM_MAX_AGE_DAYS", 7, minimum=1)

# The analytics feed (feed/, docs/integrations.md): every evaluated event, its
# decisions and every unlock, as gzipped newline-delimited JSON files in the
# `accolade_feed` storage, one UTC day a directory. Off unless asked for: it
# costs the evaluation the records' lines and one INSERT a batch.
ACCOLADE_FEED = env_bool("ACCOLADE_FEED", False)
ACCOLADE_FEED_DIR = Path(env_str("ACCOLADE_FEED_DIR") or BASE_DIR / "var" / "feed")
# Days of files kept (0: all); how often waiting records are written out.
ACCOLADE_FEED_KEEP_DAYS = env_int("ACCOLADE_FEED_KEEP_DAYS", 30, minimum=0)
ACCOLADE_FEED_INTERVAL_SECONDS = env_int("ACCOLADE_FEED_INTERVAL_SECONDS", 60, minimum=1)
CELERY_BEAT_SCHEDULE["export-feed"] = {
    "task": "feed.export",
    "schedule": float(ACCOLADE_FEED_INTERVAL_SECONDS),
}
# Writing files is the webhook worker's kind of work (I/O, off the evaluation).
CELERY_TASK_ROUTES["feed.*"] = {"queue": ACCOLADE_WEBHOOK_QUEUE}

# Email: staff notices (an endpoint turned off) and the users' daily digest.
# With EMAIL_HOST unset, messages are written to the console.
EMAIL_HOST = env_str("EMAIL_HOST") or ""
EMAIL_BACKEND = (
    "django.core.mail.backends.smtp.EmailBackend"
    if EMAIL_HOST
    else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_PORT = env_int("EMAIL_PORT", 587, minimum=1)
EMAIL_HOST_USER = env_str("EMAIL_HOST_USER") or ""
EMAIL_HOST_PASSWORD = env_str("EMAIL_HOST_PASSWORD") or ""
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", True)
DEFAULT_FROM_EMAIL = env_str("DEFAULT_FROM_EMAIL") or "Accolade <accolade@localhost>"
SERVER_EMAIL = DEFAULT_FROM_EMAIL
# Who gets staff notices: "Name <address>, ..." (Django's ADMINS).
ADMINS = env_addresses("ADMINS")
# Seconds before a mail server that stopped answering counts as a failed send.
EMAIL_TIMEOUT = env_int("EMAIL_TIMEOUT", 30, minimum=1)
# The daily digest (achievements.digest): the unlocks no page showed a user who
# asked for it, mailed once a local day by the first hourly run after this hour
# (0-23) of their time zone. Its links start with ACCOLADE_SITE_URL.
ACCOLADE_DIGEST_HOUR = env_int("ACCOLADE_DIGEST_HOUR", 8, minimum=0)
if ACCOLADE_DIGEST_HOUR > 23:
    raise ImproperlyConfigured(
        f"ACCOLADE_DIGEST_HOUR={ACCOLADE_DIGEST_HOUR} is not an hour, 0-23."
    )
CELERY_BEAT_SCHEDULE["send-digests"] = {"task": "achievements.send_digests", "schedule": 3600.0}
# Waiting on a mail server is the webhook worker's kind of work, not evaluation's.
CELERY_TASK_ROUTES["achievements.send_digests"] = {"queue": ACCOLADE_WEBHOOK_QUEUE}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
# Log-in. django-axes counts failed log-ins (every form that authenticates: the
# site's and the admin's) in the database, by the client address the
# connection (or a trusted proxy) gives, and refuses further attempts with
# 429 without checking the password, for AXES_COOLOFF_TIME after the last
# counted failure; failures while refused are not counted, so a lock-out
# always ends. Who is counted is accounts.lockout.lockout_parameters: per
# account from anywhere and per address across accounts, except that a
# browser this account has logged in from before (a signed cookie) is counted
# only with its own address, so nobody can lock a user out of the browser
# they use.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 10, minimum=1)
AXES_COOLOFF_TIME = timedelta(minutes=env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1))
AXES_LOCKOUT_PARAMETERS = "accounts.lockout.lockout_parameters"
AXES_LOCKOUT_CALLABLE = "accounts.lockout.locked_out"
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
# Not axes' own reset: it would clear every failure from the address, for
# every account, whenever anyone logged in there (a guesser's own account
# would wipe the count). accounts.lockout clears only this account's
# failures from this address.
AXES_RESET_ON_SUCCESS = False
# The address comes from REMOTE_ADDR alone: TRUSTED_PROXIES has already made
# it the client's (project/asgi.py).
AXES_IPWARE_META_PRECEDENCE_ORDER = ("REMOTE_ADDR",)
# Failed attempts are kept (the admin lists them, per account and address);
# successful log-ins are not logged one row each.
AXES_DISABLE_ACCESS_LOG = True
AXES_ENABLE_ACCESS_FAILURE_LOG = False
AXES_VERBOSE = False
# How long a browser is remembered as one an account has logged in from.
LOGIN_KNOWN_BROWSER_DAYS = env_int("LOGIN_KNOWN_BROWSER_DAYS", 90, minimum=1)
LOGIN_URL = "accounts:login"
LOGIN_REDIRECT_URL = "achievements:badges"
LOGOUT_REDIRECT_URL = "accounts:login"

# The site's public address (https://badges.example.com), written into the Open
# Badges credentials it signs; empty: each request's own.
ACCOLADE_SITE_URL = (env_str("ACCOLADE_SITE_URL") or "").rstrip("/")

LANGUAGE_CODE = "en"
# The languages the site is written in (locale/); a user picks one in their settings.
LANGUAGES = [("en", "English"), ("fr", "Français")]
LOCALE_PATHS = [BASE_DIR / "locale"]
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
STATIC_ROOT = BASE_DIR / "staticfiles"
# Serve straight from the source folders as well, so the site works without a
# collectstatic step; production runs collectstatic anyway (see README).
WHITENOISE_USE_FINDERS = True

MEDIA_URL = "/media/"
MEDIA_ROOT = Path(env_str("MEDIA_ROOT", str(BASE_DIR / "media")) or BASE_DIR / "media")

STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    # The analytics feed's files (feed.storage); an S3Storage of django-storages serves too.
    "accolade_feed": {
        "BACKEND": "feed.storage.FeedDirectory",
        "OPTIONS": {"location": ACCOLADE_FEED_DIR},
    },
}

# Uploaded images are small; anything larger is refused by the form.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440
FILE_UPLOAD_MAX_MEMORY_SIZE = 2_621_440

# The event API (api/). Limits are per request; payload limits are enforced
# by record_event for every producer alike.
ACCOLADE_API_MAX_BODY_BYTES = env_int("ACCOLADE_API_MAX_BODY_BYTES", 1_048_576, minimum=1024)
ACCOLADE_API_MAX_BATCH = env_int("ACCOLADE_API_MAX_BATCH", 500, minimum=1)
ACCOLADE_API_MAX_CLOCK_SKEW_SECONDS = env_int("ACCOLADE_API_MAX_CLOCK_SKEW_SECONDS", 300)
ACCOLADE_API_RATE_LIMIT = env_rate("ACCOLADE_API_RATE_LIMIT", "1200/60")
# Requests refused for the key they sent (unknown or revoked) one client
# address may send in a window; past it they get 429 instead of 401. A
# request without a key is not counted: it guesses nothing.
ACCOLADE_API_REFUSED_KEY_LIMIT = env_rate("ACCOLADE_API_REFUSED_KEY_LIMIT", "30/60")
# Django's database sessions, plus telling a deleted session's sockets to go.
SESSION_ENGINE = "achievements.session_store"
# Sockets. Each re-reads its session this often, besides closing at once when
# the session is ended by a log-out, a deletion or a change to the user
# (achievements.socket_sessions). A web process holds at most so many sockets
# of one session (a browser's tabs) and of one client address; more are
# closed with 4429.
SOCKET_SESSION_RECHECK_SECONDS = env_int("SOCKET_SESSION_RECHECK_SECONDS", 300, minimum=1)
SOCKETS_PER_SESSION = env_int("SOCKETS_PER_SESSION", 20, minimum=1)
SOCKETS_PER_ADDRESS = env_int("SOCKETS_PER_ADDRESS", 200, minimum=1)
# How long a web process trusts an API key it found active before looking it
# up again: the longest a revoked key keeps working on other processes.
ACCOLADE_API_KEY_RECHECK_SECONDS = env_int("ACCOLADE_API_KEY_RECHECK_SECONDS", 5, minimum=0)

_log_level = env_choice(
    "ACCOLADE_LOG_LEVEL", "INFO", ["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]
)
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
    "loggers": {
        app: {"level": _log_level, "propagate": True}
        for app in ("achievements", "webhooks", "ingest")
    },
}
