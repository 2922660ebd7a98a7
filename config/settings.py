"""One environment-driven settings module.

Every knob is read from the environment (see docs/operations.md). ``OTB_ENV`` is ``production``,
``development`` (the default) or ``test``. Production refuses to start without a real secret key
and a tunnel-secret encryption key; development generates both once and keeps them under ``var/``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import secrets
import sys
from pathlib import Path
from urllib.parse import urlsplit

import dj_database_url
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from django.core.exceptions import ImproperlyConfigured

from config.checkout_services import checkout_service_url

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(os.environ.get("OTB_VAR_DIR", BASE_DIR / "var"))

# Under pytest the default is "test" (fast password hashing, no persistent connections); the
# root conftest would be too late to set it, pytest-django loads settings before conftests.
OTB_ENV = os.environ.get("OTB_ENV") or ("test" if "pytest" in sys.modules else "development")
if OTB_ENV not in {"production", "development", "test"}:
    raise ImproperlyConfigured(f"OTB_ENV must be production, development or test, not {OTB_ENV!r}")
PRODUCTION = OTB_ENV == "production"


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return raw.strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return default if raw in (None, "") else int(raw)


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    return default if raw is None else [item.strip() for item in raw.split(",") if item.strip()]


def _kept_secret(name: str, env_name: str, make: object) -> str:
    """A secret from the environment; outside production, generated once and kept under var/."""
    value = os.environ.get(env_name)
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(f"{env_name} must be set in production")
    path = VAR_DIR / "secrets" / name
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    value = make()  # type: ignore[operator]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value)
    return value


SECRET_KEY = _kept_secret("django-secret-key", "SECRET_KEY", lambda: secrets.token_urlsafe(50))
if PRODUCTION and (len(SECRET_KEY) < 40 or SECRET_KEY.startswith("django-insecure")):
    raise ImproperlyConfigured("SECRET_KEY must be a real secret (40+ random characters) in production")

# Keys signing the JWTs of stock OverTheBox boxes (otbcompat, the /1.0 device protocol), HS256.
# OTB_COMPAT_JWT_KEYS may hold several comma-separated keys: the first signs, all verify (rotation).
# Without it, one key derived from SECRET_KEY (HMAC with a label of its own); boxes renew when it changes.
OTB_COMPAT_JWT_KEYS = env_list("OTB_COMPAT_JWT_KEYS", []) or [
    hmac.new(SECRET_KEY.encode(), b"otbcompat-jwt-v1", hashlib.sha256).hexdigest()
]

# Fernet key (urlsafe base64 of 32 bytes) encrypting the symmetric tunnel secrets at rest.
# OTB_SECRETS_KEYS may hold several comma-separated keys: the first encrypts, all decrypt (rotation).
# OTB_SECRETS_KEY (one key) is read only when OTB_SECRETS_KEYS is not set.
OTB_SECRETS_KEYS = env_list("OTB_SECRETS_KEYS", [])
if not OTB_SECRETS_KEYS:
    if PRODUCTION and not os.environ.get("OTB_SECRETS_KEY"):
        raise ImproperlyConfigured("OTB_SECRETS_KEYS (or OTB_SECRETS_KEY) must be set in production")
    OTB_SECRETS_KEYS = [
        _kept_secret(
            "tunnel-secrets-key",
            "OTB_SECRETS_KEY",
            lambda: base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
        )
    ]

# Firmware signing (fleet/firmware, docs/firmware-and-rollouts.md). OTB_FIRMWARE_SIGNING_KEY_FILE: the
# service's own ed25519 private key (PKCS#8 PEM, or the base64 of a 32-byte seed), with which staff sign
# uploaded images in the console; unset, images are signed offline (manage.py sign_firmware). In
# development a key is generated once under var/secrets/. The public key the boxes verify with is
# OTB_FIRMWARE_SIGNING_PUBLIC_KEY, or else the public half of that key file.
FIRMWARE_SIGNING_KEY_FILE = os.environ.get("OTB_FIRMWARE_SIGNING_KEY_FILE", "")
if not FIRMWARE_SIGNING_KEY_FILE and OTB_ENV == "development":
    _kept_secret(
        "firmware-signing.key",
        "OTB_FIRMWARE_SIGNING_KEY_FILE",
        lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    )
    FIRMWARE_SIGNING_KEY_FILE = str(VAR_DIR / "secrets" / "firmware-signing.key")


def _signing_public_key(path: str) -> str:
    """The base64 public key of the ed25519 private key file at ``path``."""
    data = Path(path).read_bytes()
    if b"PRIVATE KEY" in data:
        key = serialization.load_pem_private_key(data, password=None)
    else:
        key = Ed25519PrivateKey.from_private_bytes(base64.b64decode(data.strip(), validate=True))
    if not isinstance(key, Ed25519PrivateKey):
        raise ImproperlyConfigured(f"OTB_FIRMWARE_SIGNING_KEY_FILE {path} is not an ed25519 private key")
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


try:
    FIRMWARE_SIGNING_PUBLIC_KEY = os.environ.get("OTB_FIRMWARE_SIGNING_PUBLIC_KEY", "") or (
        _signing_public_key(FIRMWARE_SIGNING_KEY_FILE) if FIRMWARE_SIGNING_KEY_FILE else ""
    )
except (OSError, ValueError) as exc:
    raise ImproperlyConfigured(f"OTB_FIRMWARE_SIGNING_KEY_FILE {FIRMWARE_SIGNING_KEY_FILE}: {exc}") from exc


def public_url_parse(raw: str | None) -> str:
    """OTB_PUBLIC_URL: the origin (``scheme://host[:port]``) people and boxes reach the service at.
    Every absolute link the service sends (emails, webhooks, API page links, the schema's server) is
    built on it, never on a request's Host header. Required in production; the dev server outside."""
    if not raw:
        if PRODUCTION:
            raise ImproperlyConfigured(
                "OTB_PUBLIC_URL must be set in production: the address people and boxes reach the "
                "service at, e.g. https://fleet.example.net (links in emails and webhooks start with it)"
            )
        return f"http://127.0.0.1:{env_int('OTB_PORT', 8000)}"  # make run's own address
    try:
        parts = urlsplit(raw.strip())
        port = parts.port
    except ValueError as exc:
        raise ImproperlyConfigured(f"OTB_PUBLIC_URL is not a valid URL ({exc}): {raw!r}") from exc
    if (
        parts.scheme not in {"http", "https"}
        or not parts.hostname
        or parts.username is not None
        or parts.path not in {"", "/"}
        or parts.query
        or parts.fragment
    ):
        raise ImproperlyConfigured(
            "OTB_PUBLIC_URL must be an http(s) origin such as https://fleet.example.net "
            f"(no path, query or credentials), not {raw!r}"
        )
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


OTB_PUBLIC_URL = public_url_parse(os.environ.get("OTB_PUBLIC_URL"))

DEBUG = env_bool("DEBUG", OTB_ENV == "development")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", [] if PRODUCTION else ["*"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "channels",
    "fleet.core",
    "fleet.telemetry",
    "fleet.commands",
    "fleet.monitoring",
    "provisioning",
    "fleet.firmware",
    "otbcompat",
    "frontend",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "fleet.core.middleware.RequestIdMiddleware",
    "fleet.core.middleware.MetricsMiddleware",
    "fleet.core.middleware.QueryStringMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "frontend.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "config.urls"
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "frontend.context_processors.portal",
            ],
        },
    },
]


def service_url(key: str) -> str:
    """DATABASE_URL / REDIS_URL from the environment; outside production, else this checkout's own
    embedded service as recorded in var/services.env by scripts/devservices.py."""
    value = os.environ.get(key, "").strip()
    if value:
        return value
    if PRODUCTION:
        raise ImproperlyConfigured(f"{key} must be set in production")
    return checkout_service_url(key, VAR_DIR)


DATABASE_URL = service_url("DATABASE_URL")
DATABASES = {
    "default": dj_database_url.parse(
        DATABASE_URL,
        conn_max_age=env_int("DATABASE_CONN_MAX_AGE", 0 if OTB_ENV == "test" else 60),
        conn_health_checks=True,
    )
}
DATABASES["default"].setdefault("OPTIONS", {})
DATABASES["default"]["OPTIONS"]["application_name"] = os.environ.get("OTB_PROCESS_NAME", "otb-fleet")
# HTTP requests run on a fixed pool of OTB_HTTP_THREADS threads per process (config/asgi.py), so
# persistent per-thread connections (CONN_MAX_AGE) are bounded by it. Opt-in psycopg connection pool
# per process instead (DATABASE_POOL_MAX_SIZE > 0): fewer connections when threads mostly wait.
if env_int("DATABASE_POOL_MAX_SIZE", 0) > 0:
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"]["pool"] = {
        "min_size": env_int("DATABASE_POOL_MIN_SIZE", 2),
        "max_size": env_int("DATABASE_POOL_MAX_SIZE", 0),
        "timeout": env_int("DATABASE_POOL_TIMEOUT_S", 10),
    }
if os.environ.get("OTB_TEST_DB_NAME"):
    DATABASES["default"]["TEST"] = {"NAME": os.environ["OTB_TEST_DB_NAME"]}

REDIS_URL = service_url("REDIS_URL")

CACHES = {
    "default": {
        "BACKEND": "fleet.core.cache.SharedRedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": os.environ.get("OTB_CACHE_PREFIX", "otb"),
        "TIMEOUT": 300,
    }
}

CHANNEL_LAYERS = {
    "default": {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            # redis-py's default 5 s socket timeout equals channels_redis' 5 s BZPOPMIN: idle
            # consumers then die with "Timeout reading"; the read timeout must outlast the block.
            # max_connections: a reconnect storm makes thousands of sessions join their groups at once
            # (redis-py's default pool of 100 then raises "Too many connections").
            "hosts": [{"address": REDIS_URL, "socket_timeout": 30, "max_connections": 1000}],
            "prefix": os.environ.get("OTB_CHANNELS_PREFIX", "otb-asgi"),
            "capacity": 1000,
            "expiry": 30,
        },
    }
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
if OTB_ENV == "test":
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "/static/"
STATIC_ROOT = VAR_DIR / "static"
STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": os.environ.get("OTB_MEDIA_ROOT", str(VAR_DIR / "media"))},
    },
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
# Browser libraries come from npm (frontend/package.json, `npm ci --prefix frontend`), never a CDN:
# their dist folders are static dirs under vendor/ (collected by collectstatic in production).
STATICFILES_DIRS = [
    (f"vendor/{package}", BASE_DIR / "frontend" / "node_modules" / package / "dist")
    for package in ("htmx.org", "uplot")
    if (BASE_DIR / "frontend" / "node_modules" / package / "dist").is_dir()
]
WHITENOISE_USE_FINDERS = env_bool("WHITENOISE_USE_FINDERS", not PRODUCTION)
LOGIN_URL = "frontend:login"
LOGIN_REDIRECT_URL = "frontend:home"
LOGOUT_REDIRECT_URL = "frontend:login"
MEDIA_ROOT = os.environ.get("OTB_MEDIA_ROOT", str(VAR_DIR / "media"))
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# A request body larger than this is refused with 413 before any parsing.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("OTB_MAX_BODY_BYTES", 1024 * 1024)
FILE_UPLOAD_MAX_MEMORY_SIZE = 5 * 1024 * 1024

SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", PRODUCTION)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", PRODUCTION)
SESSION_COOKIE_HTTPONLY = True
SESSION_COOKIE_SAMESITE = "Lax"
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
if PRODUCTION:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 3600)

EMAIL_BACKEND = os.environ.get(
    "EMAIL_BACKEND",
    "django.core.mail.backends.smtp.EmailBackend"
    if PRODUCTION
    else "django.core.mail.backends.console.EmailBackend",
)
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "otb-fleet <noreply@localhost>")

# Bearer tokens of a kind that another app than the fleet core resolves to its principal.
TOKEN_AUTHENTICATORS = {"server": "provisioning.authentication.server_principal_of_token"}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "fleet.core.authentication.BearerTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # The same as fleet.core.apis.base.ApiView, which every view derives from (tests/test_api_conventions.py).
    "DEFAULT_SCHEMA_CLASS": "fleet.core.apis.base.ApiSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "fleet.core.pagination.Pagination",
    "EXCEPTION_HANDLER": "fleet.core.api_errors.exception_handler",
    "DEFAULT_PARSER_CLASSES": ["fleet.core.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"]
    + ([] if PRODUCTION else ["rest_framework.renderers.BrowsableAPIRenderer"]),
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "otb-fleet API",
    "DESCRIPTION": "Boxes, provisioning, configuration, telemetry and rollouts for a fleet of bonding boxes.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "GET_LIB_DOC_EXCLUDES": "fleet.core.apis.base.schema_doc_excludes",
    # Every choice set is one named enum component (without this, two sets behind fields of one name,
    # e.g. "state", get hashed names and a warning, which fails `spectacular --fail-on-warn`).
    "ENUM_NAME_OVERRIDES": {
        f"{name}Enum": f"{module}.{name}"
        for module, names in (
            ("fleet.core.choices", ("Role", "BoxState", "WanMode", "WanRole", "WanKind", "ReleaseChannel")),
            ("fleet.core.choices", ("EventKind",)),
            ("fleet.commands.choices", ("CommandKind", "CommandState")),
            ("fleet.firmware.choices", ("ReleaseState", "RolloutState", "RolloutAction", "UpgradeState")),
            ("fleet.firmware.choices", ("SkipReason",)),
            ("fleet.monitoring.choices", ("AlertRuleKind", "AlertState", "TargetKind", "NotificationEvent")),
            ("fleet.monitoring.choices", ("DeliveryState",)),
            ("provisioning.choices", ("ServerStatus", "PoolPurpose", "AssignmentState", "TunnelKind")),
        )
        for name in names
    },
    # The schema's server is OTB_PUBLIC_URL, read when the schema is generated (fleet.core.apis.schema).
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "fleet.core.apis.schema.servers_hook",
    ],
}

# Celery: one broker (Redis), queues per workload, every periodic task in config/celery.py.
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = None
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_TASK_ROUTES = {
    "provisioning.tasks.rollout*": {"queue": "rollouts"},
    "fleet.firmware.tasks.rollout*": {"queue": "rollouts"},
    "fleet.tasks.telemetry*": {"queue": "telemetry"},
    "fleet.telemetry.tasks.*": {"queue": "telemetry"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
# A worker killed mid-task (kill -9, OOM) never acknowledges the message it held (acks_late): the Redis
# broker hands it out again after the visibility timeout. It must exceed the longest a message stays
# unacknowledged: a prefetched message waits behind one running task, and the longest tasks may run
# 600 s, so 2 x 600 s; retry countdowns stay under half of it (longer ones are left to the sweeps).
# The work itself is recovered sooner from PostgreSQL: the rollout tick and the notification sweep
# (docs/operations.md, "A worker killed mid-task").
BROKER_VISIBILITY_TIMEOUT_S = env_int("OTB_BROKER_VISIBILITY_TIMEOUT_S", 1800)
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": BROKER_VISIBILITY_TIMEOUT_S}

# Domain settings.
OTB = {
    "ADDRESS_QUARANTINE_SECONDS": env_int("OTB_ADDRESS_QUARANTINE_SECONDS", 7 * 24 * 3600),
    "TELEMETRY_INTERVAL_S": env_int("OTB_TELEMETRY_INTERVAL_S", 10),
    # /metrics: a bearer token to require; without one, loopback clients only (config/metrics.py).
    "METRICS_TOKEN": os.environ.get("OTB_METRICS_TOKEN", ""),
    "HEARTBEAT_INTERVAL_S": env_int("OTB_HEARTBEAT_INTERVAL_S", 30),
    # Threads serving Django's HTTP requests in each ASGI process (config/asgi.py).
    "HTTP_THREADS": env_int("OTB_HTTP_THREADS", 16),
    # Failed claims per (serial, organisation) and per source address, per sliding window.
    "CLAIM_MAX_FAILURES": env_int("OTB_CLAIM_MAX_FAILURES", 5),
    "CLAIM_MAX_FAILURES_PER_IP": env_int("OTB_CLAIM_MAX_FAILURES_PER_IP", 30),
    "ENROLL_MAX_FAILURES": env_int("OTB_ENROLL_MAX_FAILURES", 5),
    "AUTH_FAILURE_WINDOW_S": env_int("OTB_AUTH_FAILURE_WINDOW_S", 900),
    "ENROLL_MAX_FAILURES_PER_IP": env_int("OTB_ENROLL_MAX_FAILURES_PER_IP", 30),
    # Failed sign-ins (portal, console and admin) per username and per source address, per window.
    "LOGIN_MAX_FAILURES": env_int("OTB_LOGIN_MAX_FAILURES", 10),
    "LOGIN_MAX_FAILURES_PER_IP": env_int("OTB_LOGIN_MAX_FAILURES_PER_IP", 50),
    # Commands people may have waiting (pending or sent, not expired) per box.
    "MAX_OPEN_COMMANDS_PER_BOX": env_int("OTB_MAX_OPEN_COMMANDS_PER_BOX", 10),
    "API_TOKEN_DEFAULT_DAYS": env_int("OTB_API_TOKEN_DEFAULT_DAYS", 90),
    # A server whose gateway has not reported for this long is flagged in the console (reports: 10 s).
    "GATEWAY_STALE_S": env_int("OTB_GATEWAY_STALE_S", 60),
    "FIRMWARE_SIGNING_PUBLIC_KEY": FIRMWARE_SIGNING_PUBLIC_KEY,
    # The service's own signing key (the console's "Sign with the service's key"); "" = none.
    "FIRMWARE_SIGNING_KEY_FILE": FIRMWARE_SIGNING_KEY_FILE,
    # The largest firmware image accepted (console and API uploads), bytes.
    "FIRMWARE_MAX_IMAGE_BYTES": env_int("OTB_FIRMWARE_MAX_IMAGE_BYTES", 256 * 1024 * 1024),
    "RAW_RETENTION_DAYS": env_int("OTB_RAW_RETENTION_DAYS", 7),
    "ROLLUP_5M_RETENTION_DAYS": env_int("OTB_ROLLUP_5M_RETENTION_DAYS", 90),
    "ROLLUP_1H_RETENTION_DAYS": env_int("OTB_ROLLUP_1H_RETENTION_DAYS", 730),
    # Box timeline events (sessions, presence, WAN up/down, config, firmware) kept this long.
    "EVENT_RETENTION_DAYS": env_int("OTB_EVENT_RETENTION_DAYS", 365),
    # Stock OverTheBox boxes (/1.0): JWT lifetime, and anonymous subscriptions per source address per window.
    "OTB_COMPAT_JWT_TTL_S": env_int("OTB_COMPAT_JWT_TTL_S", 3600),
    "OTB_COMPAT_SUBSCRIBE_MAX_PER_IP": env_int("OTB_COMPAT_SUBSCRIBE_MAX_PER_IP", 10),
    "OTB_COMPAT_SUBSCRIBE_WINDOW_S": env_int("OTB_COMPAT_SUBSCRIBE_WINDOW_S", 3600),
    # The delay (s) the server asks an idle box to wait between polls of actions/todo.
    "OTB_COMPAT_POLL_DELAY_S": env_int("OTB_COMPAT_POLL_DELAY_S", 10),
    # How long (s) the todo fast path keeps "this device is idle" in memory; forgotten at once on a change
    # through PostgreSQL LISTEN/NOTIFY (otbcompat/fastpath.py). 0: ask the database on every poll.
    "OTB_COMPAT_IDLE_CACHE_S": env_int("OTB_COMPAT_IDLE_CACHE_S", 300),
    # Configuration backups (fleet/commands/backups.py, docs/alerts-and-commands.md): the newest N kept per
    # box, bounds per backup and per file, how long a stock box may add files to a backup it started,
    # and how long a restore download link (/1.0) stays valid.
    "BACKUP_KEEP_PER_BOX": env_int("OTB_BACKUP_KEEP_PER_BOX", 10),
    "BACKUP_MAX_FILES": env_int("OTB_BACKUP_MAX_FILES", 500),
    "BACKUP_MAX_BYTES": env_int("OTB_BACKUP_MAX_BYTES", 768 * 1024),
    "BACKUP_MAX_FILE_BYTES": env_int("OTB_BACKUP_MAX_FILE_BYTES", 128 * 1024),
    "BACKUP_UPLOAD_WINDOW_S": env_int("OTB_BACKUP_UPLOAD_WINDOW_S", 900),
    "BACKUP_URL_TTL_S": env_int("OTB_BACKUP_URL_TTL_S", 600),
    # How long after its expiry a box's JWT is still taken on the telemetry routes (events, properties,
    # metrics, diagnostics), so the reports it queued before renewing are not lost (docs/otb-protocol.md).
    "OTB_COMPAT_TELEMETRY_JWT_GRACE_S": env_int("OTB_COMPAT_TELEMETRY_JWT_GRACE_S", 24 * 3600),
    # Remote access to stock OverTheBox boxes (fleet/commands/remote_access.py, docs/otb-protocol.md): the
    # bastion the boxes open their reverse SSH session to, its SSH host key, the ports of its sessions,
    # and the longest session an owner may approve.
    "REMOTE_ACCESS_BASTION_HOST": os.environ.get("OTB_REMOTE_ACCESS_BASTION_HOST", ""),
    "REMOTE_ACCESS_BASTION_HOST_KEY": os.environ.get("OTB_REMOTE_ACCESS_BASTION_HOST_KEY", ""),
    "REMOTE_ACCESS_PORT_MIN": env_int("OTB_REMOTE_ACCESS_PORT_MIN", 20000),
    "REMOTE_ACCESS_PORT_MAX": env_int("OTB_REMOTE_ACCESS_PORT_MAX", 20999),
    "REMOTE_ACCESS_MAX_DURATION_S": env_int("OTB_REMOTE_ACCESS_MAX_DURATION_S", 7 * 24 * 3600),
    # askServiceConfirmation and the derived configure are repeated at most this often per device.
    "OTB_COMPAT_ASK_CONFIRMATION_EVERY_S": env_int("OTB_COMPAT_ASK_CONFIRMATION_EVERY_S", 300),
    "OTB_COMPAT_CONFIGURE_EVERY_S": env_int("OTB_COMPAT_CONFIGURE_EVERY_S", 30),
    # The opkg feeds of stock OverTheBox boxes per release channel (release_channel), JSON:
    # {"stable": [["<feed name>", "<url with @ARCH@/@BOARD@>"], ...], "beta": [...], "dev": [...]}.
    "OTB_COMPAT_RELEASE_FEEDS": os.environ.get("OTB_COMPAT_RELEASE_FEEDS", "{}"),
    # Alert notifications (fleet/monitoring): first retry delay, doubled per attempt; whether webhooks
    # may target private/loopback addresses (never in production: customers must not probe our network).
    "NOTIFY_RETRY_BASE_S": env_int("OTB_NOTIFY_RETRY_BASE_S", 30),
    # A pending delivery overdue by this much, and not being sent, lost its task: the sweep queues it.
    "NOTIFY_STALE_AFTER_S": env_int("OTB_NOTIFY_STALE_AFTER_S", 120),
    "BROKER_VISIBILITY_TIMEOUT_S": BROKER_VISIBILITY_TIMEOUT_S,
    "WEBHOOK_ALLOW_PRIVATE": env_bool("OTB_WEBHOOK_ALLOW_PRIVATE", not PRODUCTION),
    # Live sessions and the telemetry writer (fleet/consumers.py, fleet/telemetry/writer.py).
    "MAX_SESSIONS_PER_PROCESS": env_int("OTB_MAX_SESSIONS_PER_PROCESS", 20000),
    "INVALID_FRAME_PENALTY_S": env_int("OTB_INVALID_FRAME_PENALTY_S", 60),
    "TELEMETRY_FLUSH_INTERVAL_MS": env_int("OTB_TELEMETRY_FLUSH_INTERVAL_MS", 50),
    "TELEMETRY_MAX_BATCH": env_int("OTB_TELEMETRY_MAX_BATCH", 500),
    # Most session connects / hellos / ends the session gate serves in one batch (fleet.live.gate).
    "SESSION_MAX_BATCH": env_int("OTB_SESSION_MAX_BATCH", 500),
    "TELEMETRY_MAX_PENDING": env_int("OTB_TELEMETRY_MAX_PENDING", 20000),
    "LIVE_BROADCAST_INTERVAL_S": env_int("OTB_LIVE_BROADCAST_INTERVAL_S", 5),
    # Where `make run` serves the portal (scripts/devrun.py passes the port it chose); seed_demo prints it.
    "LOCAL_URL": f"http://127.0.0.1:{env_int('OTB_PORT', 8000)}/",
    "ROLLUP_LOOKBACK_MINUTES": env_int("OTB_ROLLUP_LOOKBACK_MINUTES", 60),
}

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "json": {"()": "fleet.core.logging.JsonFormatter"},
    },
    "filters": {"request_id": {"()": "fleet.core.logging.RequestIdFilter"}},
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json", "filters": ["request_id"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        "django.request": {"level": "ERROR"},
    },
}
