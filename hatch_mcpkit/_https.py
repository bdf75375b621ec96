"""Downloading a ``bundle.tar.gz`` over https and unpacking it safely (standard library only)."""

from __future__ import annotations

import hashlib
import shutil
import ssl
import tarfile
import urllib.error
import urllib.request
from pathlib import Path, PurePosixPath

from hatch_mcpkit.__about__ import __version__
from hatch_mcpkit.errors import BundleError, RegistryError

__all__ = ["download", "extract_tar_safely"]

CHUNK = 1024 * 1024
TIMEOUT = 60.0


class _NoRedirectToHttp(urllib.request.HTTPRedirectHandler):
    """Follow redirects, but never from https down to plain http, nor to plain http off loopback."""

    def __init__(self, insecure: bool = False) -> None:
        super().__init__()
        self.insecure = insecure

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[no-untyped-def]
        if req.full_url.lower().startswith("https://") and not newurl.lower().startswith("https://"):
            raise RegistryError(f"{req.full_url}: refusing a redirect from https to {newurl}")
        if not newurl.lower().startswith("https://") and not self.insecure:
            from urllib.parse import urlsplit

            from hatch_mcpkit.reference import is_loopback

            if not is_loopback(urlsplit(newurl).netloc.rsplit("@", 1)[-1]):
                raise RegistryError(
                    f"{req.full_url}: refusing a redirect to plain HTTP off this machine ({newurl})",
                    hint="use https://, or pass --insecure if you really trust this network",
                )
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def download(url: str, dest: Path, *, max_bytes: int, ca_file: str | None = None, insecure: bool = False) -> str:
    """Stream ``url`` into ``dest``; return the SHA-256 hex of what was written.

    ``insecure`` turns off certificate checks (for https) as well as allowing
    plain http; the caller decides when plain http is allowed at all.
    """
    context = ssl.create_default_context(cafile=ca_file)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirectToHttp(insecure))
    request = urllib.request.Request(url, headers={"User-Agent": f"mcpkit/{__version__}"})
    h = hashlib.sha256()
    written = 0
    try:
        with opener.open(request, timeout=TIMEOUT) as response, open(dest, "wb") as out:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise BundleError(f"{url}: download is {int(length)} bytes, more than the {max_bytes} byte limit")
            while chunk := response.read(CHUNK):
                written += len(chunk)
                if written > max_bytes:
                    raise BundleError(f"{url}: download is larger than the {max_bytes} byte limit")
                h.update(chunk)
                out.write(chunk)
    except urllib.error.HTTPError as exc:
        dest.unlink(missing_ok=True)
        raise RegistryError(f"{url}: download failed", status=exc.code, registry_message=str(exc.reason)) from None
    except urllib.error.URLError as exc:
        dest.unlink(missing_ok=True)
        reason = exc.reason
        if isinstance(reason, ssl.SSLCertVerificationError):
            raise RegistryError(
                f"{url}: the server's TLS certificate is not trusted ({reason.verify_message})",
                hint="pass --ca-file PEM for a private CA",
            ) from None
        raise RegistryError(f"{url}: cannot download ({reason})") from None
    except (OSError, TimeoutError) as exc:
        dest.unlink(missing_ok=True)
        raise RegistryError(f"{url}: download interrupted ({exc})") from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return h.hexdigest()


def extract_tar_safely(archive: Path, dest: Path, *, max_bytes: int, max_members: int, where: str) -> list[Path]:
    """Unpack regular files and folders only: no absolute paths, no ``..``, no links, no devices; size-capped."""
    dest.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    total = 0
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for count, member in enumerate(tar, start=1):
                if count > max_members:
                    raise BundleError(f"{where}: archive has more than {max_members} entries")
                name = member.name
                parts = PurePosixPath(name).parts
                if name.startswith("/") or ".." in parts or "\\" in name:
                    raise BundleError(f"{where}: unsafe path in archive: {name!r}")
                parts = tuple(p for p in parts if p != ".")
                if not parts:
                    continue
                target = dest.joinpath(*parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if not member.isfile():
                    raise BundleError(
                        f"{where}: archive entry {name!r} is not a regular file (links and devices are refused)"
                    )
                total += member.size
                if total > max_bytes:
                    raise BundleError(f"{where}: archive unpacks to more than {max_bytes} bytes")
                target.parent.mkdir(parents=True, exist_ok=True)
                fh = tar.extractfile(member)
                assert fh is not None
                with fh, open(target, "xb") as out:
                    shutil.copyfileobj(fh, out, CHUNK)
                written.append(target)
    except FileExistsError as exc:
        raise BundleError(f"{where}: archive holds {exc.filename} twice") from None
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BundleError(f"{where}: not a readable .tar.gz archive ({exc})") from None
    return written
