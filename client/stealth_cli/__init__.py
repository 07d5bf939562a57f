# Why: the `stealth` command. Its two halves are loaded only when named: `stealth client …` from the
# client package, `stealth server …` and `stealth inspect` from the server package, so neither package
# imports the other and a client-only install (no NetfilterQueue, no compiler) still has `stealth
# client`, while its server commands say what to install.
import importlib
import importlib.util
import sys

import click

SUBCOMMANDS = {
    "client": ("stealth_connect.commands", "client", "Manage client profiles; the agent for non-root users."),
    "server": ("stealth.cli", "server", "Run and administer a stealth server."),
    "inspect": ("stealth.cli", "inspect", "Verdict and reason for every packet of a capture."),
}
SERVER_MODULES = ("netfilterqueue", "scapy")
SERVER_MISSING = ("stealth: the server is not installed here (this is a client-only install): "
                  "pip install 'stealth[server]' (it builds NetfilterQueue: needs gcc and "
                  "libnetfilter-queue-dev)")


class Stealth(click.Group):
    """A group whose subcommands are imported when used."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        """Every subcommand name, whether or not its half is installed here."""
        return sorted(SUBCOMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        """Import the named half and return its click command. A server command on a client-only install
        prints what to install and exits 1; under --help or shell completion it is a stub saying it is not
        installed."""
        if cmd_name not in SUBCOMMANDS:
            return None
        module, attr, short = SUBCOMMANDS[cmd_name]
        if module.startswith("stealth.") and any(importlib.util.find_spec(m) is None for m in SERVER_MODULES):
            if ctx.resilient_parsing or "--help" in sys.argv[1:2]:
                return click.Command(cmd_name, help=f"{short} (not installed here)", short_help=short)
            click.echo(SERVER_MISSING, err=True)
            sys.exit(1)
        command: click.Command = getattr(importlib.import_module(module), attr)
        return command


@click.group(cls=Stealth)
@click.version_option(package_name="stealth")
def main() -> None:
    """stealth: single-SYN port knocking. The kernel's own SYN carries a one-time token."""
