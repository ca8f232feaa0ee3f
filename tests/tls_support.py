"""Test certificates, made fresh in each test session's temporary directory
(no key material is ever committed): with the `cryptography` package when it
is installed, else with the `openssl` command; `tls_files` in conftest.py
skips the tests that need them when neither is there."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path

LOOPBACK_HOSTS = [f"127.0.0.{number}" for number in range(1, 6)] + ["127.0.0.100"]


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    ca_cert: Path  # a CA that signed `cert`
    cert: Path  # a node certificate naming every loopback host above
    key: Path
    self_signed_cert: Path  # one certificate for a whole group, trusted as itself
    self_signed_key: Path
    other_ca_cert: Path  # a CA that signed nothing here


class NoCertificateTool(Exception):
    pass


def make_tls_files(directory: Path) -> TlsFiles:
    try:
        import cryptography  # noqa: F401
    except ImportError:
        return _with_openssl_command(directory)
    return _with_cryptography(directory)


def _with_cryptography(directory: Path) -> TlsFiles:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    names = x509.SubjectAlternativeName(
        [x509.DNSName("localhost")]
        + [x509.IPAddress(ipaddress.ip_address(host)) for host in LOOPBACK_HOSTS])

    def build(subject, issuer, public_key, signing_key, *, ca: bool, issuer_key=None):
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                (issuer_key or signing_key).public_key()), critical=False)
        )
        if ca:
            builder = builder.add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        if not ca or subject == issuer:
            builder = builder.add_extension(names, critical=False).add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                       ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        return builder.sign(signing_key, hashes.SHA256())

    def write_key(key, path: Path) -> Path:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "wb") as file:
            file.write(key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()))
        return path

    def write_cert(cert, path: Path) -> Path:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return path

    ca_key, node_key, group_key, other_key = (ec.generate_private_key(ec.SECP256R1())
                                              for _ in range(4))
    ca = build("kvsvr test CA", "kvsvr test CA", ca_key.public_key(), ca_key, ca=True)
    node = build("kvsvr test node", "kvsvr test CA", node_key.public_key(), ca_key, ca=False)
    group = build("kvsvr test group", "kvsvr test group", group_key.public_key(), group_key,
                  ca=True)
    other = build("another CA", "another CA", other_key.public_key(), other_key, ca=True)
    return TlsFiles(
        ca_cert=write_cert(ca, directory / "ca.pem"),
        cert=write_cert(node, directory / "node.pem"),
        key=write_key(node_key, directory / "node.key"),
        self_signed_cert=write_cert(group, directory / "group.pem"),
        self_signed_key=write_key(group_key, directory / "group.key"),
        other_ca_cert=write_cert(other, directory / "other-ca.pem"),
    )


def _with_openssl_command(directory: Path) -> TlsFiles:
    if shutil.which("openssl") is None:
        raise NoCertificateTool("neither the cryptography package nor the openssl command")
    names = ",".join(["DNS:localhost"] + [f"IP:{host}" for host in LOOPBACK_HOSTS])
    leaf = ["-addext", f"subjectAltName={names}", "-addext", "basicConstraints=critical,CA:FALSE",
            "-addext", "extendedKeyUsage=serverAuth,clientAuth"]
    ca = ["-addext", "basicConstraints=critical,CA:TRUE",
          "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature"]

    def openssl(*arguments: str) -> None:
        subprocess.run(["openssl", *arguments], check=True, capture_output=True, timeout=60)

    def self_signed(name: str, subject: str, extensions: list[str]) -> tuple[Path, Path]:
        cert, key = directory / f"{name}.pem", directory / f"{name}.key"
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-days", "2", "-subj", f"/CN={subject}", "-keyout", str(key),
                "-out", str(cert), *extensions)
        key.chmod(0o600)
        return cert, key

    ca_cert, ca_key = self_signed("ca", "kvsvr test CA", ca)
    group_cert, group_key = self_signed("group", "kvsvr test group", ca + leaf[:2])
    other_cert, _ = self_signed("other-ca", "another CA", ca)
    node_key, request, node_cert = (directory / "node.key", directory / "node.csr",
                                    directory / "node.pem")
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-subj", "/CN=kvsvr test node", "-keyout", str(node_key), "-out", str(request))
    node_key.chmod(0o600)
    extensions = directory / "node.ext"
    extensions.write_text(f"subjectAltName={names}\nbasicConstraints=critical,CA:FALSE\n"
                          "extendedKeyUsage=serverAuth,clientAuth\n")
    openssl("x509", "-req", "-in", str(request), "-CA", str(ca_cert), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "2", "-extfile", str(extensions), "-out", str(node_cert))
    return TlsFiles(ca_cert, node_cert, node_key, group_cert, group_key, other_cert)
