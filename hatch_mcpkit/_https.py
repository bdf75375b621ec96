"""Downloading a ``bundle.tar.gz`` over https (standard library only); unpacking is :mod:`hatch_mcpkit._archive`."""

from __future__ import annotations

import hashlib
import ssl
import urllib.error
import urllib.request
from pathlib import Path

from hatch_mcpkit.__about__ import __version__
from hatch_mcpkit.errors import BundleError, RegistryError

__all__ = ["download"]

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
