"""Labeler accounts for the labeling app: a users file of `name:password-hash[:admin]` lines.

    python -m rlhf_recipes.feedback.users add ann --users_file labelers.txt            # asks for the password
    printf 'secret\\n' | python -m rlhf_recipes.feedback.users add lead --admin --users_file labelers.txt
    python recipes/label.py --users_file labelers.txt --host 0.0.0.0 ...   # or RLHF_LABEL_USERS=labelers.txt

Passwords are never stored or given on the command line: the file holds `scrypt$N$r$p$salt$hash` (the standard
library's `hashlib.scrypt`, a random 16-byte salt per user) and `add` reads the password from the terminal, or from
the first line of stdin when it is not a terminal. With accounts the labeler is the logged-in user: the app shows no
name box and nobody can rank under another name. `admin` users see every labeler's Stats; the others see their own.

`RLHF_LABEL_AUTH=user:password` (or `--auth`) is the one-account shortcut: one admin user for one person on a
remote machine; a team uses a users file so that every ranking carries its labeler's own name.
"""

from __future__ import annotations

import argparse
import getpass
import hashlib
import hmac
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from ..config import ConfigError
from .store import RankingRefused, check_name

USERS_ENV = "RLHF_LABEL_USERS"
AUTH_ENV = "RLHF_LABEL_AUTH"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1  # ~16 MiB and some tens of ms per check: a login, not a hot path
MIN_PASSWORD_CHARS = 8


def hash_password(password: str, salt: bytes | None = None) -> str:
    """`scrypt$N$r$p$<salt hex>$<hash hex>` of `password` with a random (or the given) salt."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=32)
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def verify_password(password: str, encoded: str) -> bool:
    """True iff `password` matches `encoded` (constant-time comparison)."""
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        digest = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p),
                                dklen=len(expected) // 2, maxmem=2**26)
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(digest.hex(), expected)


@dataclass(frozen=True)
class User:
    name: str
    password_hash: str
    admin: bool = False


class Users:
    """The accounts the app accepts; `check` is Gradio's `auth` callable."""

    def __init__(self, users: list[User]):
        self.by_name = {u.name: u for u in users}
        self._dummy = hash_password(secrets.token_hex(8))  # an unknown name costs as much time as a wrong password

    def check(self, name: str, password: str) -> bool:
        user = self.by_name.get(name)
        ok = verify_password(password, user.password_hash if user else self._dummy)
        return ok and user is not None

    def is_admin(self, name: str | None) -> bool:
        user = self.by_name.get(name or "")
        return bool(user and user.admin)

    def __len__(self) -> int:
        return len(self.by_name)


def read_users(path: str | os.PathLike) -> Users:
    """Parse a users file; refuses a malformed line by its number (and never prints a hash)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"users file {path} does not exist; create it with "
                          f"`python -m rlhf_recipes.feedback.users add NAME --users_file {path}`.")
    users: list[User] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "admin") or \
                not parts[1].startswith("scrypt$") or len(parts[1].split("$")) != 6:
            raise ConfigError(f"{path}, line {number}: expected name:scrypt$...[:admin] (write lines with "
                              "`python -m rlhf_recipes.feedback.users add NAME`, never a plain password).")
        try:
            name = check_name(parts[0], "user name")
        except RankingRefused as err:
            raise ConfigError(f"{path}, line {number}: {err}") from None
        if any(u.name == name for u in users):
            raise ConfigError(f"{path}, line {number}: user {name!r} appears twice.")
        users.append(User(name, parts[1], len(parts) == 3))
    if not users:
        raise ConfigError(f"users file {path} holds no user; add one with "
                          f"`python -m rlhf_recipes.feedback.users add NAME --users_file {path}`.")
    return Users(users)


def load_accounts(users_file: str | None, auth: str | None) -> Users | None:
    """The app's accounts: `users_file` (else $RLHF_LABEL_USERS), or one admin from `auth` (else $RLHF_LABEL_AUTH,
    `user:password`); None when neither is set (local use only)."""
    users_file = users_file or os.environ.get(USERS_ENV)
    auth = auth or os.environ.get(AUTH_ENV)
    if users_file and auth:
        raise ConfigError(f"give accounts either as a users file (--users_file / {USERS_ENV}) or as one "
                          f"user:password (--auth / {AUTH_ENV}), not both.")
    if users_file:
        return read_users(users_file)
    if auth:
        name, sep, password = auth.partition(":")
        if not sep or not name or not password:
            raise ConfigError(f"--auth / {AUTH_ENV} must be user:password.")
        try:
            name = check_name(name, "user name")
        except RankingRefused as err:
            raise ConfigError(f"--auth / {AUTH_ENV}: {err}") from None
        return Users([User(name, hash_password(password), admin=True)])
    return None


def add_user(path: str | os.PathLike, name: str, password: str, admin: bool = False) -> None:
    """Add `name` to the users file (or replace their line), with a salted hash of `password`; the file is 0600."""
    try:
        name = check_name(name, "user name")
    except RankingRefused as err:
        raise ConfigError(str(err)) from None
    if ":" in name:
        raise ConfigError("a user name cannot hold ':'.")
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(f"use a password of at least {MIN_PASSWORD_CHARS} characters.")
    path = Path(path)
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    lines = [line for line in lines if line.split(":", 1)[0].strip() != name]
    lines.append(f"{name}:{hash_password(password)}" + (":admin" if admin else ""))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(path, 0o600)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != first:
            raise ConfigError("the two passwords differ.")
        return first
    return sys.stdin.readline().rstrip("\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    add = commands.add_parser("add", help="add a user or set their password (read from the terminal or stdin)")
    add.add_argument("name")
    add.add_argument("--admin", action="store_true", help="may see every labeler's Stats")
    add.add_argument("--users_file", default=os.environ.get(USERS_ENV, "labelers.txt"))
    args = parser.parse_args(argv)
    add_user(args.users_file, args.name, _read_password(), admin=args.admin)
    print(f"{args.name} {'(admin) ' if args.admin else ''}can now log in: {args.users_file}")


if __name__ == "__main__":
    from ..config import UserError

    try:
        main()
    except UserError as err:  # a refusal, not a bug: its message, exit code 2
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
