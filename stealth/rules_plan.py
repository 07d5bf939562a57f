# Why: which rules a config asks for is decided in one place, by a pure function of the config, the
# queue layout and what the host does with unused ports; the daemon (server.py), `stealth server rules
# apply` (rules_apply.py) and the tests all use it, and none of them needs the daemon to get its rules.
# Only host_modes() looks at the host (hoststyle.py), and only when server.toml says unauth = "auto".
from collections.abc import Iterable, Mapping

from stealth.firewall import RuleConfig
from stealth.hoststyle import host_unused_port_mode
from stealth.server_config import ServerConfig, UnauthMode


def chain_of(queue_num: int) -> str:
    """The name of our chains for a queue (RuleConfig.chain), without a whole RuleConfig."""
    return RuleConfig(queue_num, (), 1).chain


def firewall_plan(config: ServerConfig, queue_num: int, workers: int,
                  host: Mapping[int, UnauthMode]) -> dict[int, RuleConfig]:
    """The rules for each family in `host` (family -> what the host does with an unused port, "drop" or
    "reset"): server.toml's settings, the queue layout, and the unauth mode, which is the host's unless
    server.toml forces one. ValueError for a mode RuleConfig does not know."""
    c = config
    return {
        family: RuleConfig(
            queue_num, c.ports, c.mark, host_mode if c.unauth is UnauthMode.AUTO else c.unauth,
            c.syn_rate_per_second, c.syn_burst, c.prefix_v4, c.prefix_v6, workers=workers,
            accept_port=c.accept_port,
        )
        for family, host_mode in host.items()
    }


def host_modes(config: ServerConfig, queue_num: int, families: Iterable[int]) -> dict[int, UnauthMode]:
    """What this host does with unused ports, per family: looked up only when server.toml's unauth is
    "auto" (FirewallError when it cannot be told), else the forced mode for every family."""
    if config.unauth is not UnauthMode.AUTO:
        return {family: config.unauth for family in families}
    chain = chain_of(queue_num)
    return {family: host_unused_port_mode(family, chain) for family in families}


def rules_for(config: ServerConfig, queue_num: int, workers: int,
              families: Iterable[int]) -> dict[int, RuleConfig]:
    """firewall_plan() for this host."""
    return firewall_plan(config, queue_num, workers, host_modes(config, queue_num, families))
