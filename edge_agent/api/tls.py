"""Optional HTTPS for the Robot API, and `continuon tls init` (a self-signed certificate).

A robot on a home LAN has no name a public CA would certify, so the
certificate is self-signed and the client pins its SHA-256 fingerprint,
shown once by `continuon tls init` (and by `continuon tls show`): what the
phone checks is "this is the key of my robot", not a CA chain.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import ssl
import sys
from pathlib import Path
from typing import Any

from brain.config import ApiConfig, Config

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"


def server_tls_context(api: ApiConfig) -> ssl.SSLContext | None:
    """The server context for api.tls_cert/api.tls_key; None: plain HTTP."""
    if api.tls_cert is None or api.tls_key is None:
        return None
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(str(api.tls_cert), str(api.tls_key))
    except (OSError, ssl.SSLError) as exc:
        # Never fall back to plain HTTP: the owner asked for TLS, and tokens would leak.
        raise RuntimeError(
            f"api.tls_cert / api.tls_key: cannot load {api.tls_cert} with {api.tls_key}: {exc} "
            "(make a pair with `continuon tls init`)"
        ) from None
    return ctx


def fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the DER certificate, as colon-separated hex (what browsers and apps show)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    digest = x509.load_pem_x509_certificate(cert_pem).fingerprint(hashes.SHA256())
    return ":".join(f"{b:02X}" for b in digest)


def default_dir(config: Config) -> Path:
    return config.state_dir() / "edge" / "tls"


def make_self_signed(
    names: list[str], addresses: list[str], days: int = 3650
) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM): ECDSA P-256, the robot's names and addresses as SANs."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    sans: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    sans += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _robot_names(config: Config) -> tuple[list[str], list[str]]:
    from edge_agent.api.hosts import own_addresses, own_names

    names = sorted(own_names(config.robot.id) | {h.lower() for h in config.api.allowed_hosts})
    names.sort(key=lambda n: (n == "localhost", "." not in n))  # a real name first (the CN)
    addresses = sorted(a for a in own_addresses() if not a.startswith("fe80"))
    return names, addresses


def register_cli(sub: argparse._SubParsersAction[argparse.ArgumentParser], add_config: Any) -> None:
    p = sub.add_parser("tls", help="HTTPS for the Robot API: a self-signed certificate")
    tsub = p.add_subparsers(dest="tls_action", required=True)
    i = tsub.add_parser("init", help="make a self-signed certificate and print its fingerprint")
    i.add_argument("--dir", type=Path, help="where to write cert.pem and key.pem")
    i.add_argument("--days", type=int, default=3650, help="validity (default 3650)")
    i.add_argument("--force", action="store_true", help="replace an existing certificate")
    add_config(i)
    s = tsub.add_parser("show", help="print the configured certificate's fingerprint")
    add_config(s)
    p.set_defaults(func=_cli_tls)


def _cli_tls(args: argparse.Namespace) -> int:
    from common.durable import replace_file

    config = args.load_config()
    if args.tls_action == "show":
        if config.api.tls_cert is None:
            print("continuon: HTTPS is off (no api.tls_cert); run `continuon tls init`")
            return 1
        print(f"SHA-256 fingerprint: {fingerprint(config.api.tls_cert.read_bytes())}")
        return 0
    out: Path = args.dir or default_dir(config)
    cert_path, key_path = out / CERT_NAME, out / KEY_NAME
    if cert_path.exists() and not args.force:
        print(
            f"continuon: {cert_path} exists (fingerprint {fingerprint(cert_path.read_bytes())}); "
            "--force replaces it, and every paired app must then accept the new fingerprint",
            file=sys.stderr,
        )
        return 1
    if not 1 <= args.days <= 36500:
        print("continuon: --days must be 1-36500", file=sys.stderr)
        return 2
    names, addresses = _robot_names(config)
    cert_pem, key_pem = make_self_signed(names, addresses, args.days)
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    replace_file(key_path, key_pem, mode=0o600)
    replace_file(cert_path, cert_pem, mode=0o644)
    os.chmod(out, 0o700)
    print(f"wrote {cert_path} and {key_path} for {', '.join(names + addresses)}")
    print(f"SHA-256 fingerprint: {fingerprint(cert_pem)}")
    print("to serve HTTPS, add to the robot's config and restart the daemon:")
    print(f"  api:\n    tls_cert: {cert_path}\n    tls_key: {key_path}")
    print("then pair the app at https://<robot>:<port>/ and check that it shows this fingerprint")
    return 0
