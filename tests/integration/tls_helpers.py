"""A throwaway PKI made with the openssl command: a test CA and certificates it signs."""

from __future__ import annotations

import socket
import ssl
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path


def openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, f"openssl {' '.join(args)} failed:\n{proc.stderr}"


@dataclass
class Pki:
    dir: Path
    ca_cert: Path

    def issue(self, name: str, *, dns: list[str] = (), ips: list[str] = (), cn: str | None = None) -> tuple[Path, Path]:
        """A key and certificate signed by this CA, with the given subjectAltNames."""
        key, csr, cert = (self.dir / f"{name}.key", self.dir / f"{name}.csr", self.dir / f"{name}.crt")
        openssl("req", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", csr.name,
                "-subj", f"/CN={cn or name}", cwd=self.dir)
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips]
        ext = self.dir / f"{name}.ext"
        ext.write_text("basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                       "extendedKeyUsage=serverAuth\n" + (f"subjectAltName={','.join(sans)}\n" if sans else ""))
        openssl("x509", "-req", "-in", csr.name, "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-out", cert.name, "-days", "30", "-sha256", "-extfile", ext.name, cwd=self.dir)
        key.chmod(0o600)
        return cert, key


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    openssl("req", "-x509", "-new", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
            "-days", "30", "-subj", "/CN=Concierge Test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)
    return Pki(dir=directory, ca_cert=directory / "ca.crt")


def peer_certificate(host: str, port: int, ca: Path | None = None, timeout: float = 10) -> dict:
    """The certificate a PostgreSQL-protocol server presents after SSLRequest (decoded, unverified
    unless `ca` is given)."""
    raw = socket.create_connection((host, port), timeout=timeout)
    try:
        raw.sendall(struct.pack("!ii", 8, 80877103))
        answer = raw.recv(1)
        assert answer == b"S", f"SSLRequest answered {answer!r}"
        context = ssl.create_default_context(cafile=str(ca)) if ca else ssl._create_unverified_context()
        context.check_hostname = False
        with context.wrap_socket(raw, server_hostname=host) as tls:
            der = tls.getpeercert(binary_form=True)
            version = tls.version()
        pem = ssl.DER_cert_to_PEM_cert(der)
        proc = subprocess.run(["openssl", "x509", "-noout", "-subject", "-serial"], input=pem,
                              capture_output=True, text=True, timeout=10)
        return {"text": proc.stdout, "version": version}
    finally:
        raw.close()
