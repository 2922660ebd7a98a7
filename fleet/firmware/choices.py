from django.db import models


class ReleaseState(models.TextChoices):
    """draft -> published -> withdrawn. Only published releases are rolled out or downloaded."""

    DRAFT = "draft", "Draft"
    PUBLISHED = "published", "Published"
    WITHDRAWN = "withdrawn", "Withdrawn"


class RolloutState(models.TextChoices):
    """draft -> (scheduled ->) running <-> paused -> completed | aborted."""

    DRAFT = "draft", "Draft"
    SCHEDULED = "scheduled", "Scheduled"
    RUNNING = "running", "Running"
    PAUSED = "paused", "Paused"
    COMPLETED = "completed", "Completed"
    ABORTED = "aborted", "Aborted"


class RolloutAction(models.TextChoices):
    """What a person may do to a rollout; which ones its state allows is
    ``fleet.firmware.transitions.ROLLOUT_ACTIONS`` (``Rollout.next_actions``)."""

    START = "start", "Start"
    PAUSE = "pause", "Pause"
    RESUME = "resume", "Resume"
    ABORT = "abort", "Abort"
    RETRY_FAILED = "retry-failed", "Retry failed"


ACTIVE_ROLLOUT_STATES = (RolloutState.SCHEDULED, RolloutState.RUNNING, RolloutState.PAUSED)
# States in which the periodic task still has work to do (paused rollouts keep tracking upgrades
# already in flight; they just send nothing new).
TICKED_ROLLOUT_STATES = (RolloutState.SCHEDULED, RolloutState.RUNNING, RolloutState.PAUSED)


class UpgradeState(models.TextChoices):
    """One box's upgrade; the legal moves are in ``fleet.firmware.transitions``."""

    PENDING = "pending", "Pending"
    SCHEDULED = "scheduled", "Scheduled"
    SENT = "sent", "Sent"
    DOWNLOADING = "downloading", "Downloading"
    VERIFYING = "verifying", "Verifying"
    INSTALLING = "installing", "Installing"
    REBOOTING = "rebooting", "Rebooting"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    TIMED_OUT = "timed_out", "Timed out"
    CANCELLED = "cancelled", "Cancelled"
    SKIPPED = "skipped", "Skipped"


U = UpgradeState
WAITING_STATES = (U.PENDING, U.SCHEDULED)
IN_FLIGHT_STATES = (U.SENT, U.DOWNLOADING, U.VERIFYING, U.INSTALLING, U.REBOOTING)
OPEN_STATES = WAITING_STATES + IN_FLIGHT_STATES
FAILURE_STATES = (U.FAILED, U.TIMED_OUT)
TERMINAL_STATES = (U.SUCCEEDED, U.FAILED, U.TIMED_OUT, U.CANCELLED, U.SKIPPED)


class SkipReason(models.TextChoices):
    MODEL_UNSUPPORTED = "model_unsupported", "The image does not fit the box's hardware model"
    ALREADY_ON_VERSION = "already_on_version", "The box already runs this version"
    DOWNGRADE = "downgrade", "The box runs a newer version"
    AUTO_UPGRADE_OFF = "auto_upgrade_off", "The customer turned automatic upgrades off"
    CHANNEL = "channel", "The box's release channel does not take this release's channel"
    IN_OTHER_ROLLOUT = "in_other_rollout", "The box already has an open upgrade"
    OFFLINE_UNTIL_END = "offline_until_end", "The box stayed offline until the rollout ended"
