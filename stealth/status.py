# Why: `stealth server status` in one document. The text an administrator reads is rendered from the
# very object `--json` prints, so the two can never disagree: server.toml's settings, every client with
# its last counter and its last accepted knock (time and source, from accepts.py), and the daemon as its
# status.json and pid say (running, stopped, dead, stalled), with the address families its rules
# protect and the unauth mode each was installed with. Reads only; changes nothing.
import time
from typing import Any

from stealth.accepts import LastAccept, read_last_accepts
from stealth.server_state import ServerState

DAEMON_STATES = {
    "running": "running",
    "stopped": "stopped (its rules stay in place: the protected ports are closed to everyone)",
    "dead": "dead: killed or crashed without stopping (its rules stay in place: the protected ports are "
            "closed to everyone, knocks included, until it runs again)",
    "stalled": "not answering: its status is more than a few seconds old",
}


def utc(unix_time: float) -> str:
    """ISO 8601 UTC text (…Z) of a unix time."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(unix_time))


def status_doc(state: ServerState) -> dict[str, Any]:
    """Everything `status` shows, as one JSON-ready object."""
    config = state.load_config()
    counters = state.load_counters()
    accepts = read_last_accepts(state.accept_files())
    now = time.time()
    clients = []
    for _, e in sorted(state.load_clients().items()):
        record = e.record.settle(counters, now)  # a finished rotation shows as done before it is folded
        last = accepts.get(record.enrollment)
        rotation = record.rotation
        clients.append({
            "name": record.name, "ports": list(record.ports),
            "last_counter": max(counters.get(record.enrollment, 0), record.counter_floor),
            "port_bits": record.port_bits, "bind_source": record.bind_source,
            "last_accept": accept_doc(last),
            "rotation": None if rotation is None else {  # pending: the new key was never used
                "old_key_until": utc(rotation.until_s), "old_key_unix_until": rotation.until_s},
        })
    settings = config.to_doc()  # server.toml's own fields, in its own words
    return {
        "server_id": settings["server_id"], "config_file": str(state.config_path),
        "state_dir": str(state.dir),
        **{key: settings[key] for key in ("ports", "window", "queue", "unauth", "syn_rate_per_second")},
        "backends": [{"port": p, "backend": str(config.backend(p)), "sealed": p in config.sealed}
                     for p in config.ports],
        "seal_deadline_ms": settings["seal_deadline_ms"],
        "clients": clients, "server": daemon_doc(state),
    }


def accept_doc(last: LastAccept | None) -> dict[str, Any] | None:
    """A client's last accepted knock for status (time as text and unix seconds, source); None if never."""
    return None if last is None else {
        "time": utc(last.unix_time), "unix_time": last.unix_time, "source": last.source}


def daemon_doc(state: ServerState) -> dict[str, Any] | None:
    """The daemon's part: None if it never ran on this state directory."""
    alive, st = state.daemon_state()
    if st is None:
        return None
    modes = st.get("unauth_modes")
    families = [f"ipv{f}" for f in st.get("families") or [] if f in (4, 6)]
    return {
        "state": alive, "pid": st.get("pid"), "written_at": st.get("written_at"),
        "families": families,
        "unauth_modes": {f: modes[f] for f in families if f in modes} if isinstance(modes, dict) else {},
        "workers": st.get("workers"), "clients_loaded": st.get("clients"),
        "rule_repairs": st.get("rule_repairs") or 0, "last_rule_problem": st.get("last_rule_problem"),
        "public_listeners": st.get("public_listeners") or [], "reload_error": st.get("reload_error"),
        "counts": dict(sorted((st.get("counts") or {}).items())),
    }


def render(doc: dict[str, Any]) -> list[str]:
    """The text of `status`, line by line, from status_doc()'s object."""
    lines = [
        f"server id: {doc['server_id']}",
        f"config: {doc['config_file']}  state: {doc['state_dir']}",
        f"ports: {','.join(map(str, doc['ports']))}  window: {doc['window']}  queue: {doc['queue']}  "
        f"unauth: {doc['unauth']}  syn rate: {doc['syn_rate_per_second']}/s per prefix",
    ]
    for b in doc["backends"]:
        sealed = f", sealed (proof within {doc['seal_deadline_ms']} ms)" if b["sealed"] else ""
        lines.append(f"  port {b['port']}: accepted connections go to {b['backend']}{sealed}")
    lines.append(f"clients: {len(doc['clients'])}")
    lines += [client_line(c) for c in doc["clients"]]
    return lines + daemon_lines(doc["server"])


def client_line(c: dict[str, Any]) -> str:
    """One client's line of the `status` text, from its object in status_doc()'s "clients"."""
    opts = [] if c["port_bits"] else ["no-port-bits"]
    if c["bind_source"]:
        opts.append(f"bind-source={c['bind_source']}")
    last = c["last_accept"]
    seen = "never accepted" if last is None else f"last accepted {last['time']} from {last['source']}"
    rotation = c["rotation"]
    rotating = "" if rotation is None else (
        f"; rotating: the new key was never used, the old one opens until {rotation['old_key_until']}")
    return (f"  {c['name']}: ports {','.join(map(str, c['ports']))} last counter {c['last_counter']}"
            + (f" ({', '.join(opts)})" if opts else "") + f"; {seen}{rotating}")


def daemon_lines(d: dict[str, Any] | None) -> list[str]:
    """The daemon's lines of the `status` text, from status_doc()'s "server" object (None: never ran)."""
    if d is None:
        return ["server: never ran"]
    lines = [f"server: {DAEMON_STATES[d['state']]} (pid {d['pid']})"]
    if d["families"]:
        modes = d["unauth_modes"]
        lines.append("  protected: " + ", ".join(
            f"{f} (unauth {modes[f]})" if f in modes else f for f in d["families"]))
    if d["reload_error"]:
        lines.append(f"  last reload failed, the previous clients are in use: {d['reload_error']}")
    if d["rule_repairs"]:
        lines.append(f"  rules reinstalled {d['rule_repairs']} times after someone removed them (last: "
                     f"{d['last_rule_problem']})")
    if d["public_listeners"]:
        lines.append(f"  a socket listens on a protected port's public address: {d['public_listeners']}; "
                     "every unauthenticated SYN is dropped until it is gone")
    lines += [f"  {reason}: {n}" for reason, n in d["counts"].items()]
    return lines
