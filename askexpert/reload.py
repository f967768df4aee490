"""Pack hot reload, shared by the hub and the edge: a new pack is taken without a restart.

An operator replaces the pack at the configured path (best as a symlink swapped with `ln -sfn`, so
no reader sees half a folder) and sends SIGHUP. The component's `PackReloader` then, on its own
thread while the old pack keeps serving: loads the manifest, checks that the pack can replace the
running one (same routing, `pack_id`, and input), verifies every file of the pack against its
sha256 (not only those it will use: an edge and a hub then accept or refuse the same packs, and no
component runs a version that is broken on disk), builds and warms up the models (`build`, engines first), and only then hands them to the
component (`install`), which switches between two batches. Anything wrong refuses the pack whole:
a clear error in the log and the status (`pack_reload`), `ate_pack_reloads_total{result="refused"}`,
and the old pack serves on. A new routing (other classes or partition) needs a restart: edges and
hubs must agree on it, which one process alone cannot change.
"""

from __future__ import annotations

import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from askexpert import metrics
from askexpert.log import get_logger

if TYPE_CHECKING:  # askexpert.pack imports torch: the CLIs import this module before their flags are checked
    from askexpert.pack import Pack

log = get_logger("askexpert.reload")


def check_replaces(old: "Pack", new: "Pack") -> None:
    """PackError unless `new` can serve in place of `old` without a restart."""
    from askexpert.pack import PackError

    if new.pack_id != old.pack_id:
        raise PackError(f"pack {new.root} routes differently (pack id {new.pack_id}, running {old.pack_id}): a new routing needs a restart")
    if new.manifest.input != old.manifest.input:
        raise PackError(f"pack {new.root} takes other input ({new.manifest.input}) than the running pack: restart to change it")


def pack_labels(component: str, pack: "Pack") -> dict[str, str]:
    return {"component": component, "pack": pack.pack_id, "version": pack.version}


class PackReloader:
    """Loads a new pack beside the running one on request, one load at a time.

    build(pack): the models, warmed up; install(pack, built): switch to them (between batches; a
    ValueError refuses them);
    on_status(report): publish the reload's outcome (the status message)."""

    def __init__(
        self,
        component: str,
        path: Path,
        current: "Pack",
        build: Callable[["Pack"], Any],
        install: Callable[["Pack", Any], None],
        on_status: Callable[[dict], None],
    ) -> None:
        self.component, self.path, self.current = component, path, current
        self._build, self._install, self._on_status = build, install, on_status
        self._wanted = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.last: dict = {}
        metrics.PACK_INFO.labels(**pack_labels(component, current)).set(1)
        for result in ("loaded", "refused", "unchanged"):
            metrics.PACK_RELOADS.labels(component, result)  # at 0 until the first: alert rules see them from the start

    def request(self) -> None:
        """Ask for a reload (from a signal handler: returns at once). A request during a load runs after it."""
        self._wanted.set()
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="pack-reload", daemon=True)
                self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        while self._wanted.is_set():
            self._wanted.clear()
            self._reload_once()

    def _reload_once(self) -> None:
        from askexpert.pack import Pack, PackError

        t0 = time.monotonic()
        try:
            new = Pack.load(self.path.resolve())  # a symlink is followed once: one folder is read, even if swapped meanwhile
            if new.version == self.current.version:
                return self._report("unchanged", new, t0)
            check_replaces(self.current, new)
            new.verify(new.entries)  # every file, not only this component's: edge and hub accept or refuse the same packs
            self._install(new, self._build(new))
        except (PackError, OSError, RuntimeError, ValueError) as exc:
            return self._report("refused", None, t0, error=str(exc)[:500])
        old, self.current = self.current, new
        metrics.PACK_INFO.remove(*pack_labels(self.component, old).values())
        metrics.PACK_INFO.labels(**pack_labels(self.component, new)).set(1)
        return self._report("loaded", new, t0, previous=old.version)

    def _report(self, result: str, pack: "Pack | None", t0: float, **info: str) -> None:
        metrics.PACK_RELOADS.labels(self.component, result).inc()
        self.last = {"result": result, "path": str(self.path), "seconds": round(time.monotonic() - t0, 3), **info}
        if pack is not None:
            self.last["version"] = pack.version
        if result == "refused":
            log.error("pack reload refused; the running pack serves on", running=self.current.version, **self.last)
        else:
            log.info("pack reload", **self.last)
        self._on_status(self.last)


def ignore_sighup() -> None:
    """While a component starts, a SIGHUP is ignored instead of ending the process (its default
    action): an operator who signals too early loses nothing; reload_on_sighup takes over later."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, signal.SIG_IGN)


@contextmanager
def reload_on_sighup(request: Callable[[], None]) -> Iterator[None]:
    """Within the block SIGHUP asks for a reload (the handler only starts the loader thread). Off the
    main thread nothing is installed (Python lets only the main thread set handlers), as in
    askexpert.lifecycle.capture_signals; the previous handler is restored after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGHUP, lambda signum, frame: request())
    try:
        yield
    finally:
        signal.signal(signal.SIGHUP, previous)
