-- Placement of a box: the server-side functions behind provisioning.allocation.
--
-- The one current definition. Migrations load this file (CREATE OR REPLACE: loading it again is
-- harmless); a change here ships with a new migration that loads it. Earlier versions are in git.
--
-- Every claim on a server serialises on that server's row lock (and the pools' row locks) until
-- commit. Doing the locked work (choose and lock the server, take a port and a slot, lock the pools,
-- gap-search one index per purpose, raise the hints) in one server-side call keeps the time the locks
-- are held independent of client round trips. Each statement of a VOLATILE plpgsql function takes a
-- fresh snapshot, so the searches run after the locks are held see every committed allocation.

CREATE OR REPLACE FUNCTION provisioning_lowest_free_port(p_server uuid, p_hint integer)
RETURNS integer LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT p_hint WHERE NOT EXISTS (
            SELECT 1 FROM fleet_box WHERE server_id = p_server AND tunnel_port = p_hint)),
        (SELECT b.tunnel_port + 1 FROM fleet_box b
          WHERE b.server_id = p_server AND b.tunnel_port >= p_hint
            AND NOT EXISTS (SELECT 1 FROM fleet_box c
                             WHERE c.server_id = p_server AND c.tunnel_port = b.tunnel_port + 1)
          ORDER BY b.tunnel_port LIMIT 1))
$$;

CREATE OR REPLACE FUNCTION provisioning_lowest_free_index(p_pool uuid, p_hint bigint)
RETURNS bigint LANGUAGE sql STABLE AS $$
    SELECT COALESCE(
        (SELECT p_hint WHERE NOT EXISTS (
            SELECT 1 FROM provisioning_addressassignment WHERE pool_id = p_pool AND "index" = p_hint)),
        (SELECT a."index" + 1 FROM provisioning_addressassignment a
          WHERE a.pool_id = p_pool AND a."index" >= p_hint
            AND NOT EXISTS (SELECT 1 FROM provisioning_addressassignment b
                             WHERE b.pool_id = p_pool AND b."index" = a."index" + 1)
          ORDER BY a."index" LIMIT 1))
$$;

-- The prefixes of a pool that may be handed out are the indexes [first, first + usable). Every prefix
-- of the block, except in a public IPv4 pool of single addresses wider than /31: its first address is
-- the network address and its last the broadcast address, neither usable by a host (a /31 is
-- point-to-point, RFC 3021: both usable). The one definition: allocation uses it below, and the
-- capacity figures (provisioning.selectors.infrastructure) read the same functions.
CREATE OR REPLACE FUNCTION provisioning_pool_first_index(p_purpose text, p_cidr cidr, p_prefix_length integer)
RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN p_purpose = 'public_ipv4' AND family(p_cidr) = 4 AND p_prefix_length = 32
                     AND masklen(p_cidr) <= 30
                THEN 1 ELSE 0 END::bigint
$$;

CREATE OR REPLACE FUNCTION provisioning_pool_usable(p_purpose text, p_cidr cidr, p_prefix_length integer)
RETURNS numeric LANGUAGE sql IMMUTABLE AS $$
    SELECT power(2::numeric, p_prefix_length - masklen(p_cidr))
           - 2 * provisioning_pool_first_index(p_purpose, p_cidr, p_prefix_length)
$$;

-- The placement policy, in one place: the active server with spare capacity, in the preferred region
-- first, then with the most spare slots, never p_exclude. Not locked: provisioning_place_box locks the
-- server it takes (and re-checks it); a reassignment asks first so that it can lock the old and the
-- new server in primary-key order.
CREATE OR REPLACE FUNCTION provisioning_best_server(p_preferred_region uuid, p_exclude uuid)
RETURNS uuid LANGUAGE sql STABLE AS $$
    SELECT id FROM provisioning_aggregationserver
     WHERE status = 'active' AND assigned_boxes < capacity
       AND (p_exclude IS NULL OR id <> p_exclude)
     ORDER BY (region_id IS DISTINCT FROM p_preferred_region), capacity - assigned_boxes DESC, id
     LIMIT 1
$$;

CREATE OR REPLACE FUNCTION provisioning_place_box(
    p_preferred_region uuid, p_server uuid, p_exclude uuid, p_purposes text[]
) RETURNS jsonb LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    srv provisioning_aggregationserver%ROWTYPE;
    v_port integer;
    v_purpose text;
    v_pool record;
    v_first bigint;
    v_end numeric;
    v_idx bigint;
    v_found boolean;
    v_names text[];
    v_chosen jsonb := '[]'::jsonb;
    v_region jsonb;
    v_best uuid;
    v_attempt integer;
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
        -- The best server may fill up while we wait for its lock: then the policy is asked again
        -- (each statement here sees what committed meanwhile), until a server is taken or none is left.
        FOR v_attempt IN 1..1000 LOOP
            v_best := provisioning_best_server(p_preferred_region, p_exclude);
            IF v_best IS NULL THEN
                RETURN jsonb_build_object('error', 'no_server_capacity');
            END IF;
            SELECT * INTO srv FROM provisioning_aggregationserver
             WHERE id = v_best AND status = 'active' AND assigned_boxes < capacity
               FOR UPDATE;
            EXIT WHEN FOUND;
        END LOOP;
        IF srv.id IS NULL THEN
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
            v_first := provisioning_pool_first_index(v_purpose, v_pool.cidr, v_pool.prefix_length);
            v_end := v_first + provisioning_pool_usable(v_purpose, v_pool.cidr, v_pool.prefix_length);
            v_idx := provisioning_lowest_free_index(v_pool.id, GREATEST(v_pool.free_index_hint, v_first));
            IF v_idx >= v_end AND v_pool.free_index_hint > v_first THEN
                -- a stale hint: search once from the start before giving up on this pool
                v_idx := provisioning_lowest_free_index(v_pool.id, v_first);
            END IF;
            IF v_idx < v_end THEN
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
      FROM fleet_region r WHERE r.id = srv.region_id;
    RETURN jsonb_build_object(
        'server', to_jsonb(srv), 'region', v_region, 'port', v_port, 'assignments', v_chosen);
END
$$;
