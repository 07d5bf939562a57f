# Why: every protocol and deployment constant lives here once, with its unit in its name, so the core,
# the adapters, the docs and the tests can never disagree about a number. Two groups: PROTOCOL (what the
# client and the server must agree on, or tokens stop matching: changing one is a protocol change) and
# DEPLOYMENT (how this implementation runs: queues, rates, timeouts, paths, file modes; each end may
# change its own without the other noticing).
from __future__ import annotations  # so no annotation below is evaluated: Final is for mypy only

TYPE_CHECKING = False  # typing's import costs ~3.4 ms of stealth-connect's start; mypy treats it as True
if TYPE_CHECKING:
    from typing import Final

# =========================================================================================================
# PROTOCOL: both ends must agree (docs/PROTOCOL.md)
# =========================================================================================================

PROTOCOL_VERSION: Final = 1  # the version byte in the token's MAC input (docs/PROTOCOL.md is at 2)

# Keys and derivation labels (BLAKE2b "personalisation", 16 bytes each).
KEY_BYTES: Final = 32
TOKEN_PERSON: Final = b"stealth-token-v1"
SESSION_PERSON: Final = b"stealth-sess-v01"
KEY_ID_PERSON: Final = b"stealth-keyid-v1"
# Sealed ports: the first bytes each way of a knocked connection, MACs under its session key.
PROOF_CLIENT_PERSON: Final = b"stealth-prf-c-v1"
PROOF_SERVER_PERSON: Final = b"stealth-prf-s-v1"
PROOF_BYTES: Final = 16
TOKEN_DIGEST_BYTES: Final = 32
SESSION_KEY_BYTES: Final = 32

COUNTER_BITS: Final = 64
COUNTER_MAX: Final = (1 << COUNTER_BITS) - 1
ISN_MODULUS: Final = (1 << 32) - 1  # ISN = 1 + (u32 % (2^32 - 1)), so it is never 0

# Ports: TCP's range, and the source-port mapping's defaults: Linux's default ephemeral range and
# connect() parity, even ports 32768..60999 (a step of 1 or 2: every port, or every other one).
MAX_TCP_PORT: Final = 65535
DEFAULT_PORT_LOW: Final = 32768
DEFAULT_PORT_HIGH: Final = 60999
DEFAULT_PORT_STEP: Final = 2
MAX_PORT_STEP: Final = 2

# Look-ahead window: how many future counters per client the server accepts (and precomputes).
DEFAULT_WINDOW: Final = 16
MAX_WINDOW: Final = 1024

# Recovery: a client that may be past the window knocks with the token of counter
# RECOVERY_COUNTER_FLAG | slot, slot = unix time // RECOVERY_SLOT_SECONDS. The server holds the tokens of
# its slot and RECOVERY_SLOT_SKEW on either side, and accepts one only while it would move the client's
# counter forward, to recovery_base(slot) = slot << RECOVERY_BASE_SHIFT (2^24 knocks between two slots).
RECOVERY_SLOT_SECONDS: Final = 600
RECOVERY_SLOT_SKEW: Final = 1
RECOVERY_COUNTER_FLAG: Final = 1 << 63  # normal counters stay below it
RECOVERY_BASE_SHIFT: Final = 24

# =========================================================================================================
# DEPLOYMENT: how this implementation runs (either end may change its own)
# =========================================================================================================

# --- the client ------------------------------------------------------------------------------------------
# A knock that got no answer is sent again, same counter, same ISN and source port, for this long after
# it was first sent (by later stealth-connect runs too). Below conntrack's SYN_RECV timeout (60 s): if
# the server did accept it and only the answer was lost, a resend on the same tuple still finds the
# marked conntrack entry. It is not longer because a knock the server took without answering (a crash
# between accept and verdict, a token raced by a thief) stays unanswered until the client moves on;
# a counter spent on a dead server costs nothing lasting (3 of them lead to the recovery knock).
PENDING_KNOCK_SECONDS: Final = 20.0
# How long one stealth-connect waits for the answer to its knock, while the kernel resends the SYN on the
# same tuple (after 1, 3, 7 s with Linux's defaults: four SYNs).
DEFAULT_CONNECT_TIMEOUT_SECONDS: Final = 10.0
# A name with several addresses: each but the last gets this long (the SYN and the kernel's first
# resend) before stealth-connect moves on to the next, as ssh does with its ConnectTimeout.
NEXT_ADDRESS_AFTER_SECONDS: Final = 2.5

# The client agent (stealth_connect/agent.py): a root process that hands unprivileged users TCP sockets
# whose SYN will carry a given ISN, over a Unix seqpacket socket.
DEFAULT_AGENT_SOCKET: Final = "/run/stealth/agent.sock"
AGENT_SOCKET_ENV: Final = "STEALTH_AGENT_SOCKET"
DEFAULT_AGENT_GROUP: Final = "stealth"
AGENT_SOCKET_MODE: Final = 0o660
AGENT_IDLE_SECONDS: Final = 2.0  # a connection that sends no request for this long is closed
AGENT_REPLY_SECONDS: Final = 2.0  # how long stealth-connect waits for the agent's greeting or reply
AGENT_MAX_CONNECTIONS: Final = 64  # open at once; more wait in the listen backlog
AGENT_MAX_REQUESTS: Final = 16  # per connection (one run needs one per knock it sends)

# --- the server's settings (server.toml and `stealth server init`'s flags: defaults and bounds) ----------
DEFAULT_PROTECTED_PORT: Final = 22  # ssh
MAX_PROTECTED_PORTS: Final = 15  # iptables multiport limit
DEFAULT_QUEUE_NUM: Final = 50
MAX_QUEUE_NUM: Final = 65535  # NFQUEUE numbers are 16 bits
DEFAULT_MARK: Final = 0x10000000
MAX_MARK: Final = 0xFFFFFFFF  # packet and connection marks are 32 bits
# The daemon's transparent listener on loopback, which TPROXY hands accepted knocks to. Above Linux's
# ephemeral range (32768-60999), so no outgoing connection of the host can hold it.
DEFAULT_ACCEPT_PORT: Final = 61050
# Kernel rate limit of SYNs per source prefix (/24, /64) that reach the queue, for sources that have not
# knocked successfully before (those are exempt for GOOD_SOURCE_SECONDS).
DEFAULT_SYN_RATE_PER_SECOND: Final = 100
SYN_BURST_PER_RATE: Final = 2  # the burst `stealth server init` sets: two seconds' worth of the rate
DEFAULT_SYN_BURST: Final = SYN_BURST_PER_RATE * DEFAULT_SYN_RATE_PER_SECOND
MAX_SYN_RATE_PER_SECOND: Final = 10_000_000  # the bound of the rate and of the burst
DEFAULT_PREFIX_V4_BITS: Final = 24
DEFAULT_PREFIX_V6_BITS: Final = 64
MIN_PREFIX_V4_BITS: Final = 8
MIN_PREFIX_V6_BITS: Final = 16
GOOD_SOURCE_SECONDS: Final = 86400
# Sealed ports: a sealed connection's proof must arrive within the deadline.
DEFAULT_SEAL_DEADLINE_MS: Final = 5000
MIN_SEAL_DEADLINE_MS: Final = 100
MAX_SEAL_DEADLINE_MS: Final = 600_000

# --- enrollment --------------------------------------------------------------------------------------------
MAX_CLIENT_NAME_CHARS: Final = 64
DEFAULT_ROTATION_OVERLAP_SECONDS: Final = 7 * 86400  # a rotated client's old key opens this long at most
MAX_REVOKED_KEYS: Final = 10_000  # revoked keys whose live tokens the daemon keeps, to log their knocks

# --- the daemon --------------------------------------------------------------------------------------------
MAX_WORKERS: Final = 64  # `stealth server run --workers`
# How often the daemon checks that its rules are still installed (and reinstalls them).
RULE_CHECK_SECONDS: Final = 1.0
# `stealth server rules apply`: how long a rule change waits for confirmation before it is rolled back.
DEFAULT_RULES_CONFIRM_SECONDS: Final = 60.0
MAX_RULES_CONFIRM_SECONDS: Final = 3600
FIREWALL_TOOL_TIMEOUT_SECONDS: Final = 30  # one iptables run
NFQUEUE_MAX_LEN: Final = 4096
NFQUEUE_COPY_BYTES: Final = 128  # IPv4 60 + TCP 60 header bytes fit; a longer SYN carries data
NFQUEUE_SOCKET_BYTES_PER_PACKET: Final = 832
# Group commit: held knocks are made durable with one fsync when the queue drains, or sooner when this
# many are waiting or the oldest has waited this long.
GROUP_COMMIT_MAX: Final = 256
GROUP_COMMIT_SECONDS: Final = 0.002
# Collected drops are sent as one batch once this many wait (well below NFQUEUE_MAX_LEN: they count
# against the queue's length until their verdict), and whenever the queue is drained.
DROP_BATCH_MAX: Final = 1024
# Run loop.
STATUS_INTERVAL_SECONDS: Final = 1.0
SUPERVISOR_TICK_SECONDS: Final = 0.2  # how often the parent of --workers looks at its workers
DAEMON_STALE_SECONDS: Final = 5.0  # a running daemon whose status is older than this is not answering
RELOAD_POLL_SECONDS: Final = 1.0
RELOAD_STEP_SECONDS: Final = 0.05  # reload work between two queue polls (a 1M-client reload is ~13 s)
# Each client's last accepted knock (stealth/accepts.py): the daemon appends what changed about once a
# second and folds the log into its snapshot when it outgrows the snapshot or this size.
ACCEPTS_LOG_MIN_BYTES: Final = 1 << 20
# Refused knocks of a known client's token (replay, wrong source) are logged with their source, for
# fail2ban; per reason and per queue worker at most this many lines a second after a burst, and what was
# held back is summed up in one line per interval (stealth/core/ratelimit.py).
REFUSAL_LOG_PER_SECOND: Final = 5.0
REFUSAL_LOG_BURST: Final = 20
REFUSAL_SUMMARY_SECONDS: Final = 5.0

# --- files and paths ---------------------------------------------------------------------------------------
SECRET_FILE_MODE: Final = 0o600
STATE_DIR_MODE: Final = 0o700  # state directories (the server's, a client's): keys and counters
# The server's standard layout (stealth/server_state.py, resolve_layout): server.toml in the config
# directory, everything the daemon writes in the state directory. Each may be named by an environment
# variable (ours first, then the one systemd sets for ConfigurationDirectory= / StateDirectory=).
DEFAULT_CONFIG_DIR: Final = "/etc/stealth"
DEFAULT_STATE_DIR: Final = "/var/lib/stealth"
CONFIG_DIR_ENV: Final = "STEALTH_CONFIG_DIR"
STATE_DIR_ENV: Final = "STEALTH_STATE_DIR"
SYSTEMD_CONFIG_DIR_ENV: Final = "CONFIGURATION_DIRECTORY"
SYSTEMD_STATE_DIR_ENV: Final = "STATE_DIRECTORY"

# --- systemd and privileges --------------------------------------------------------------------------------
# systemd integration (stealth/notify.py, stealth/systemd/stealth.service) and the privileges the
# packet-filter tools need: CAP_NET_ADMIN for netlink/NFQUEUE/iptables-nft, CAP_NET_RAW for
# iptables-legacy's raw socket (capability bit numbers of linux/capability.h).
NOTIFY_SOCKET_ENV: Final = "NOTIFY_SOCKET"
CAP_NET_ADMIN_BIT: Final = 12
CAP_NET_RAW_BIT: Final = 13
SBIN_DIRS: Final = ("/usr/sbin", "/sbin")  # where iptables lives when a user's PATH does not name it
