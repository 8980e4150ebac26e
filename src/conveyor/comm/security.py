"""TLS settings for a cluster: :class:`Security` turns credentials into SSL contexts.

Every value may be a path to a PEM file or the PEM text itself (text starting with
``-----BEGIN``). Contexts are built, and so every file read and checked, when the
``Security`` is made. PEM text given in memory must still reach OpenSSL through a path
(``SSLContext.load_cert_chain`` takes file names only): it goes through an anonymous
in-memory file (:func:`os.memfd_create`, opened as ``/proc/self/fd/N``), or failing
that a file in ``/dev/shm`` (memory-backed) removed at once; either is closed right
after loading, and no key material is ever written to a disk.
"""

from __future__ import annotations

import contextlib
import json
import os
import ssl
import tempfile
from collections.abc import Iterator
from typing import Any

from conveyor import config

__all__ = ["ROLES", "Security", "as_security", "client_security", "default_protocol"]

#: roles that ask for connection or listen arguments, and whose credentials they use
ROLES = {"scheduler": "scheduler", "worker": "worker", "nanny": "worker", "client": "client"}
_CREDENTIAL_ROLES = ("scheduler", "worker", "client")
_VERSIONS = {
    "1.2": ssl.TLSVersion.TLSv1_2,
    "1.3": ssl.TLSVersion.TLSv1_3,
}
_PROC_FD = "/proc/self/fd"
_SHM = "/dev/shm"


def _is_pem(value: str) -> bool:
    return value.lstrip().startswith("-----BEGIN")


def _parse_min_version(value: object) -> ssl.TLSVersion:
    if isinstance(value, ssl.TLSVersion):
        version = value
    elif isinstance(value, (str, float)) and not isinstance(value, bool):
        text = str(value).strip().lower().removeprefix("tlsv").replace("_", ".")
        if text not in _VERSIONS:
            raise ValueError(
                f"tls_min_version {value!r} is not supported: use '1.2' or '1.3' "
                "(or ssl.TLSVersion.TLSv1_2 / TLSv1_3); TLS older than 1.2 is refused"
            )
        version = _VERSIONS[text]
    else:
        raise ValueError(f"tls_min_version must be an ssl.TLSVersion or '1.2'/'1.3', got {value!r}")
    if version not in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        raise ValueError(
            f"tls_min_version {version.name} is refused: conveyor requires TLS 1.2 or newer"
        )
    return version


def _check_value(field: str, value: object) -> str | None:
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a file path or PEM text, got {value!r}")
    if not _is_pem(value) and not os.path.isfile(value):
        raise FileNotFoundError(f"{field}: no such file {value!r}")
    return value


@contextlib.contextmanager
def _memory_file(data: str) -> Iterator[str]:
    """Yield a path from which ``data`` can be read, backed by memory only."""
    raw = data.encode()
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None and os.path.isdir(_PROC_FD):
        fd = memfd_create("conveyor-tls", os.MFD_CLOEXEC)
        path = f"{_PROC_FD}/{fd}"
    elif os.path.isdir(_SHM):
        fd, path = tempfile.mkstemp(prefix="conveyor-tls-", dir=_SHM)  # mode 0600
    else:
        raise RuntimeError(
            "TLS credentials held in memory need Linux (memfd_create or /dev/shm) to be "
            "loaded; give tls_* file paths instead"
        )
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        yield path
    finally:
        os.close(fd)
        if not path.startswith(_PROC_FD):
            os.unlink(path)


@contextlib.contextmanager
def _as_path(value: str | None) -> Iterator[str | None]:
    if value is None or not _is_pem(value):
        yield value
    else:
        with _memory_file(value) as path:
            yield path


def _shown(value: str | None) -> str:
    return "<in memory>" if value is not None and _is_pem(value) else repr(value)


class Security:
    """TLS credentials and policy for a cluster's connections (mutual TLS).

    ``tls_ca_file`` is the cluster's certificate authority; each role presents its own
    certificate and key: ``tls_scheduler_cert``/``_key``, ``tls_worker_cert``/``_key``
    (workers and nannies) and ``tls_client_cert``/``_key``. Each value is a path to a PEM
    file or the PEM text itself; a certificate file may hold its key too. Any argument
    left ``None`` takes its value from the configuration (``conveyor.comm.tls.ca-file``,
    ``conveyor.comm.tls.scheduler.cert`` ..., ``conveyor.comm.tls.min-version``,
    ``conveyor.comm.tls.ciphers``, ``conveyor.comm.require-encryption``).

    Trust means *holding a certificate signed by this CA*, in both directions: a server
    demands a certificate from every client (``CERT_REQUIRED``) and a client verifies the
    server's; only the cluster's CA is trusted (not the system's). Host names are not
    checked: cluster certificates name roles, not hosts, so anyone with a certificate
    from the CA may act as any role. Give each cluster its own CA.

    ``tls_min_version`` (default TLS 1.2) is the oldest version accepted; older ones are
    refused with a ``ValueError``. ``tls_ciphers`` is an OpenSSL cipher string for TLS
    1.2 (TLS 1.3 suites are OpenSSL's). ``require_encryption`` refuses plain ``tcp://``
    listeners and connections. Bad combinations (a certificate without a key or CA, a
    key without a certificate), missing files and unreadable PEM raise at construction.

    :meth:`get_listen_args` and :meth:`get_connection_args` give the keyword arguments
    for :func:`conveyor.comm.listen` and :func:`conveyor.comm.connect`; their contexts are
    made once and shared by every call (making one takes milliseconds): do not modify them.
    :meth:`temporary` makes throwaway credentials held in memory only. A ``Security``
    pickles (with its PEM text, if any) for processes it starts; its repr shows paths,
    never PEM text.
    """

    require_encryption: bool
    tls_ca_file: str | None
    tls_ciphers: str | None
    tls_min_version: ssl.TLSVersion
    tls_scheduler_cert: str | None
    tls_scheduler_key: str | None
    tls_worker_cert: str | None
    tls_worker_key: str | None
    tls_client_cert: str | None
    tls_client_key: str | None

    def __init__(
        self,
        *,
        require_encryption: bool | None = None,
        tls_ca_file: str | os.PathLike[str] | None = None,
        tls_ciphers: str | None = None,
        tls_min_version: ssl.TLSVersion | str | float | None = None,
        tls_scheduler_cert: str | os.PathLike[str] | None = None,
        tls_scheduler_key: str | os.PathLike[str] | None = None,
        tls_worker_cert: str | os.PathLike[str] | None = None,
        tls_worker_key: str | os.PathLike[str] | None = None,
        tls_client_cert: str | os.PathLike[str] | None = None,
        tls_client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        def default(value: object, key: str) -> Any:
            return config.get(key, None) if value is None else value

        settings: dict[str, Any] = {
            "require_encryption": default(require_encryption, "comm.require-encryption"),
            "tls_ca_file": default(tls_ca_file, "comm.tls.ca-file"),
            "tls_ciphers": default(tls_ciphers, "comm.tls.ciphers"),
            "tls_min_version": default(tls_min_version, "comm.tls.min-version"),
        }
        given = {
            "scheduler": (tls_scheduler_cert, tls_scheduler_key),
            "worker": (tls_worker_cert, tls_worker_key),
            "client": (tls_client_cert, tls_client_key),
        }
        for role, (cert, key) in given.items():
            settings[f"tls_{role}_cert"] = default(cert, f"comm.tls.{role}.cert")
            settings[f"tls_{role}_key"] = default(key, f"comm.tls.{role}.key")
        self._setup(settings)

    def _setup(self, settings: dict[str, Any]) -> None:
        required = settings["require_encryption"]
        if required is None:
            required = False
        if not isinstance(required, bool):
            raise ValueError(f"require_encryption must be True or False, got {required!r}")
        self.require_encryption = required
        self.tls_min_version = _parse_min_version(
            "1.2" if settings["tls_min_version"] is None else settings["tls_min_version"]
        )
        ciphers = settings["tls_ciphers"]
        if ciphers is not None and (not isinstance(ciphers, str) or not ciphers.strip()):
            raise ValueError(f"tls_ciphers must be an OpenSSL cipher string, got {ciphers!r}")
        self.tls_ciphers = ciphers
        self.tls_ca_file = _check_value("tls_ca_file", settings["tls_ca_file"])
        for role in _CREDENTIAL_ROLES:
            cert = _check_value(f"tls_{role}_cert", settings[f"tls_{role}_cert"])
            key = _check_value(f"tls_{role}_key", settings[f"tls_{role}_key"])
            if key is not None and cert is None:
                raise ValueError(f"tls_{role}_key is given without tls_{role}_cert")
            if cert is not None and self.tls_ca_file is None:
                raise ValueError(
                    f"tls_{role}_cert is given without tls_ca_file: mutual TLS needs the "
                    "CA that signed the cluster's certificates"
                )
            setattr(self, f"tls_{role}_cert", cert)
            setattr(self, f"tls_{role}_key", key)
        self._contexts: dict[tuple[str, bool], ssl.SSLContext] = {}
        for role in _CREDENTIAL_ROLES:
            if getattr(self, f"tls_{role}_cert") is not None:
                for server_side in (True, False):
                    self._contexts[role, server_side] = self._make_context(role, server_side)

    def _make_context(self, role: str, server_side: bool) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if server_side else ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False  # certificates name roles, not hosts (see the docstring)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.minimum_version = self.tls_min_version
        ca = self.tls_ca_file
        assert ca is not None
        try:
            if _is_pem(ca):
                ctx.load_verify_locations(cadata=ca)
            else:
                ctx.load_verify_locations(cafile=ca)
        except (ssl.SSLError, ValueError) as e:
            raise ValueError(f"tls_ca_file {_shown(ca)} holds no usable certificate: {e}") from e
        cert = getattr(self, f"tls_{role}_cert")
        key = getattr(self, f"tls_{role}_key")
        try:
            with _as_path(cert) as cert_path, _as_path(key) as key_path:
                assert cert_path is not None
                ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as e:
            missing = " (and no key in that file)" if key is None else ""
            raise ValueError(
                f"tls_{role}_cert {_shown(cert)} and tls_{role}_key {_shown(key)}{missing} "
                f"are not a matching PEM certificate and key: {e}"
            ) from e
        if self.tls_ciphers is not None:
            try:
                ctx.set_ciphers(self.tls_ciphers)
            except ssl.SSLError as e:
                raise ValueError(f"tls_ciphers {self.tls_ciphers!r} selects no cipher") from e
        return ctx

    @classmethod
    def temporary(
        cls,
        *,
        require_encryption: bool = True,
        tls_min_version: ssl.TLSVersion | str | float = ssl.TLSVersion.TLSv1_2,
        tls_ciphers: str | None = None,
    ) -> Security:
        """Return a ``Security`` with fresh credentials for one cluster: a new CA and
        one certificate and key it signed (EC P-256, valid for a day), used by every
        role. They are held in memory only (and travel with the object when it is
        pickled for a process it starts); nothing is written to disk, and the CA's key
        is discarded once the certificate is signed."""
        # imported here: cryptography takes tens of milliseconds to import, and only
        # temporary credentials need it (not every process that imports conveyor)
        from conveyor.comm.certificates import make_temporary_credentials

        creds = make_temporary_credentials()
        return cls(
            require_encryption=require_encryption,
            tls_ca_file=creds.ca_cert,
            tls_ciphers=tls_ciphers,
            tls_min_version=tls_min_version,
            tls_scheduler_cert=creds.cert,
            tls_scheduler_key=creds.key,
            tls_worker_cert=creds.cert,
            tls_worker_key=creds.key,
            tls_client_cert=creds.cert,
            tls_client_key=creds.key,
        )

    def _context(self, role: str, server_side: bool) -> ssl.SSLContext | None:
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}; expected one of {sorted(ROLES)}")
        return self._contexts.get((ROLES[role], server_side))

    def get_listen_args(self, role: str) -> dict[str, Any]:
        """Keyword arguments for :func:`conveyor.comm.listen` by ``role`` ("scheduler",
        "worker", "nanny" or "client"): ``ssl_context`` (a server context demanding a
        client certificate from the CA; ``None`` when the role has no certificate) and
        ``require_encryption``."""
        return {
            "ssl_context": self._context(role, server_side=True),
            "require_encryption": self.require_encryption,
        }

    def get_connection_args(self, role: str) -> dict[str, Any]:
        """Keyword arguments for :func:`conveyor.comm.connect` by ``role``: ``ssl_context``
        (a client context presenting the role's certificate and verifying the server's
        against the CA; ``None`` when the role has no certificate) and
        ``require_encryption``."""
        return {
            "ssl_context": self._context(role, server_side=False),
            "require_encryption": self.require_encryption,
        }

    def to_fd(self) -> int:
        """An inheritable file descriptor of an anonymous in-memory file holding these
        settings (PEM text included), for a process this one starts (``conveyor worker
        --security-fd N``, read by :meth:`from_fd`). The caller closes its copy once the
        child started. Needs Linux (``memfd_create``): key material never touches a
        disk, nor a command line or environment a task could read from ``ps``."""
        memfd_create = getattr(os, "memfd_create", None)
        if memfd_create is None:
            raise NotImplementedError(
                "passing TLS credentials to a worker process needs os.memfd_create (Linux)"
            )
        settings = dict(self._settings())
        settings["tls_min_version"] = "1.3" if self.tls_min_version.name == "TLSv1_3" else "1.2"
        fd: int = memfd_create("conveyor-security", 0)
        os.write(fd, json.dumps(settings).encode())
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    @classmethod
    def from_fd(cls, fd: int) -> Security:
        """The ``Security`` a parent process passed with :meth:`to_fd` (the descriptor
        is read, then closed)."""
        with os.fdopen(fd, "rb") as f:
            settings = json.loads(f.read())
        if not isinstance(settings, dict):
            raise ValueError("the security descriptor holds no settings")
        return _restore(settings)

    def _settings(self) -> dict[str, Any]:
        names = ["require_encryption", "tls_ca_file", "tls_ciphers", "tls_min_version"]
        names += [f"tls_{role}_{part}" for role in _CREDENTIAL_ROLES for part in ("cert", "key")]
        return {name: getattr(self, name) for name in names}

    def __reduce__(self) -> tuple[Any, ...]:
        # rebuilt from the resolved settings, not from the receiving process's config
        return (_restore, (self._settings(),))

    def __repr__(self) -> str:
        parts = [
            f"require_encryption={self.require_encryption}",
            f"tls_min_version={self.tls_min_version.name}",
        ]
        for name, value in self._settings().items():
            if name.startswith("tls_") and name != "tls_min_version" and value is not None:
                parts.append(f"{name}={_shown(value)}")
        return f"Security({', '.join(parts)})"


def _restore(settings: dict[str, Any]) -> Security:
    security = Security.__new__(Security)
    security._setup(settings)
    return security


def as_security(value: object, what: str) -> Security:
    """``security=`` of ``what``: a :class:`Security` is used as given; ``None`` or
    ``False`` mean the configuration's (``conveyor.comm.tls.*``: no TLS unless it names
    credentials). Anything else is refused: ``True`` (fresh temporary credentials) is
    for ``LocalCluster``, which starts every process that must share them."""
    if value is None or value is False:
        return Security()
    if isinstance(value, Security):
        return value
    if value is True:
        raise TypeError(
            f"{what}(security=True) would make credentials no other process has: pass a "
            "Security (LocalCluster(security=True) makes and shares temporary ones)"
        )
    raise TypeError(f"{what}(security=...) takes a conveyor.Security, not {value!r}")


def default_protocol(security: Security, role: str) -> str:
    """``"tls"`` when ``security`` holds credentials for ``role``, else ``"tcp"``."""
    has_credentials = security.get_listen_args(role)["ssl_context"] is not None
    return "tls" if has_credentials else "tcp"


def client_security(cluster: object | None, security: object) -> Security:
    """A client's ``security=``: as given, else its cluster object's, else the
    configuration's."""
    if security is None and cluster is not None:
        security = getattr(cluster, "security", None)
    return as_security(security, "Client")
