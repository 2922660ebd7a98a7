"""provisioning_place_box() also returns the chosen server's region (id, code, name).

The claim answers with the box as the box list shows it (server and region included); with the
region in the placement result it needs no second read of the box after the claim.
"""

from importlib import import_module

from django.db import migrations

FUNCTION = r"""
CREATE OR REPLACE FUNCTION provisioning_place_box(
    p_preferred_region uuid, p_server uuid, p_exclude uuid, p_purposes text[]
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    srv provisioning_aggregationserver%ROWTYPE;
    v_port integer;
    v_purpose text;
    v_pool record;
    v_size numeric;
    v_idx bigint;
    v_found boolean;
    v_names text[];
    v_chosen jsonb := '[]'::jsonb;
    v_region jsonb;
BEGIN
    IF p_server IS NOT NULL THEN
        SELECT * INTO srv FROM provisioning_aggregationserver WHERE id = p_server FOR UPDATE;
        IF NOT FOUND OR srv.status <> 'active' THEN
            RETURN jsonb_build_object('error', 'server_not_active', 'server', srv.name, 'status', srv.status);
        END IF;
        IF srv.assigned_boxes >= srv.capacity THEN
            RETURN jsonb_build_object('error', 'no_server_capacity', 'server', srv.name);
        END IF;
    ELSE
        SELECT * INTO srv FROM provisioning_aggregationserver
         WHERE status = 'active' AND assigned_boxes < capacity
           AND (p_exclude IS NULL OR id <> p_exclude)
         ORDER BY (region_id IS DISTINCT FROM p_preferred_region), capacity - assigned_boxes DESC, id
         LIMIT 1
           FOR UPDATE;
        IF NOT FOUND THEN
            RETURN jsonb_build_object('error', 'no_server_capacity');
        END IF;
    END IF;

    v_port := provisioning_lowest_free_port(srv.id, GREATEST(srv.free_port_hint, srv.tunnel_port_min));
    IF v_port > srv.tunnel_port_max THEN
        v_port := provisioning_lowest_free_port(srv.id, srv.tunnel_port_min);
    END IF;
    IF v_port > srv.tunnel_port_max THEN
        RETURN jsonb_build_object('error', 'no_free_port', 'server', srv.name);
    END IF;
    UPDATE provisioning_aggregationserver
       SET assigned_boxes = assigned_boxes + 1, free_port_hint = v_port + 1, updated_at = now()
     WHERE id = srv.id;

    PERFORM 1 FROM provisioning_addresspool
      WHERE (server_id = srv.id OR region_id = srv.region_id) AND purpose = ANY (p_purposes)
      ORDER BY id
        FOR UPDATE;
    FOREACH v_purpose IN ARRAY p_purposes LOOP
        v_found := false;
        v_names := '{}';
        FOR v_pool IN
            SELECT id, name, cidr, prefix_length, free_index_hint FROM provisioning_addresspool
             WHERE (server_id = srv.id OR region_id = srv.region_id) AND purpose = v_purpose
             ORDER BY (server_id IS NULL), name
        LOOP
            v_names := v_names || v_pool.name::text;
            v_size := power(2::numeric, v_pool.prefix_length - masklen(v_pool.cidr));
            v_idx := provisioning_lowest_free_index(v_pool.id, v_pool.free_index_hint);
            IF v_idx >= v_size AND v_pool.free_index_hint > 0 THEN
                -- a stale hint: search once from the start before giving up on this pool
                v_idx := provisioning_lowest_free_index(v_pool.id, 0);
            END IF;
            IF v_idx < v_size THEN
                UPDATE provisioning_addresspool SET free_index_hint = v_idx + 1 WHERE id = v_pool.id;
                v_chosen := v_chosen || jsonb_build_object(
                    'purpose', v_purpose, 'pool', v_pool.id, 'index', v_idx,
                    'cidr', v_pool.cidr::text, 'prefix_length', v_pool.prefix_length);
                v_found := true;
                EXIT;
            END IF;
        END LOOP;
        IF NOT v_found THEN
            RETURN jsonb_build_object(
                'error', 'pool_exhausted', 'purpose', v_purpose, 'pools', to_jsonb(v_names),
                'server', srv.name, 'region', srv.region_id);
        END IF;
    END LOOP;

    SELECT jsonb_build_object('id', r.id, 'code', r.code, 'name', r.name) INTO v_region
      FROM provisioning_region r WHERE r.id = srv.region_id;
    RETURN jsonb_build_object(
        'server', to_jsonb(srv), 'region', v_region, 'port', v_port, 'assignments', v_chosen);
END
$$;
"""

# Reversing restores the function as migration 0003 created it.
PREVIOUS = import_module("provisioning.migrations.0003_place_box_function").FUNCTIONS


class Migration(migrations.Migration):
    dependencies = [("provisioning", "0003_place_box_function")]

    operations = [migrations.RunSQL(FUNCTION, PREVIOUS)]
