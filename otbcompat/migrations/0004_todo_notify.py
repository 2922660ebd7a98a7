"""NOTIFY ``otb_todo`` when something may end a stock box's idle poll, so the ASGI fast path
(otbcompat/fastpath.py) can keep "this device is idle" in memory and forget it at once.

Payloads: ``b:<box id>`` when a command becomes pending (or its expiry moves) and when a box's
desired or applied config hash changes; ``d:<device id>`` when a device row changes what the idle
query reads (revoked, JWT generation, linked box, confirmation) or goes away. NOTIFY is delivered at
commit and folds identical payloads within one transaction.
"""

from django.db import migrations

FORWARD = """
CREATE FUNCTION otbcompat_todo_notify_box() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('otb_todo', 'b:' || NEW.box_id::text);
    RETURN NULL;
END $$;

CREATE FUNCTION otbcompat_todo_notify_box_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('otb_todo', 'b:' || NEW.id::text);
    RETURN NULL;
END $$;

CREATE FUNCTION otbcompat_todo_notify_device() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('otb_todo', 'd:' || OLD.id::text);
    RETURN NULL;
END $$;

CREATE TRIGGER otbcompat_todo_command_insert AFTER INSERT ON commands_command
    FOR EACH ROW WHEN (NEW.state = 'pending')
    EXECUTE FUNCTION otbcompat_todo_notify_box();
CREATE TRIGGER otbcompat_todo_command_update AFTER UPDATE OF state, expires_at, box_id ON commands_command
    FOR EACH ROW WHEN (NEW.state = 'pending')
    EXECUTE FUNCTION otbcompat_todo_notify_box();
CREATE TRIGGER otbcompat_todo_box_config AFTER UPDATE OF config_hash, applied_config_hash ON fleet_box
    FOR EACH ROW WHEN (NEW.config_hash IS DISTINCT FROM OLD.config_hash
                       OR NEW.applied_config_hash IS DISTINCT FROM OLD.applied_config_hash)
    EXECUTE FUNCTION otbcompat_todo_notify_box_row();
CREATE TRIGGER otbcompat_todo_device_update AFTER UPDATE ON otbcompat_otbdevice
    FOR EACH ROW WHEN (NEW.revoked_at IS DISTINCT FROM OLD.revoked_at
                       OR NEW.jwt_generation IS DISTINCT FROM OLD.jwt_generation
                       OR NEW.box_id IS DISTINCT FROM OLD.box_id
                       OR NEW.confirmed_at IS DISTINCT FROM OLD.confirmed_at
                       OR NEW.id IS DISTINCT FROM OLD.id)
    EXECUTE FUNCTION otbcompat_todo_notify_device();
CREATE TRIGGER otbcompat_todo_device_delete AFTER DELETE ON otbcompat_otbdevice
    FOR EACH ROW EXECUTE FUNCTION otbcompat_todo_notify_device();
"""

BACKWARD = """
DROP TRIGGER IF EXISTS otbcompat_todo_command_insert ON commands_command;
DROP TRIGGER IF EXISTS otbcompat_todo_command_update ON commands_command;
DROP TRIGGER IF EXISTS otbcompat_todo_box_config ON fleet_box;
DROP TRIGGER IF EXISTS otbcompat_todo_device_update ON otbcompat_otbdevice;
DROP TRIGGER IF EXISTS otbcompat_todo_device_delete ON otbcompat_otbdevice;
DROP FUNCTION IF EXISTS otbcompat_todo_notify_box();
DROP FUNCTION IF EXISTS otbcompat_todo_notify_box_row();
DROP FUNCTION IF EXISTS otbcompat_todo_notify_device();
"""


class Migration(migrations.Migration):
    dependencies = [
        ("commands", "0004_otb_kinds"),
        ("fleet", "0001_initial"),
        ("otbcompat", "0003_telemetry"),
    ]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
