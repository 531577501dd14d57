"""Measuring a run's memory: the resident set's peak above its level at entry, sampled in a thread."""

from __future__ import annotations

import threading

import psutil

from ..machine import release_free_memory


def _rss_parts() -> dict:
    """Resident memory by kind (Linux): file-backed pages (memory-mapped safetensors weights, libraries) and
    anonymous ones (tensors the process made: activations, gradients, optimizer state, allocator caches)."""
    parts = {}
    try:
        for line in open("/proc/self/status"):
            if line.startswith(("RssAnon:", "RssFile:", "RssShmem:")):
                key, kib = line.split()[:2]
                parts[key[3:-1].lower()] = int(kib) * 1024
    except OSError:
        pass
    return parts


class RssPeak:
    """Peak resident memory above its level at entry, sampled every 20 ms by a background thread, with its
    split into file-backed and anonymous pages at the peak (Linux)."""

    def __enter__(self):
        release_free_memory()  # so a previous arm's freed pages do not hide this arm's growth
        self._process = psutil.Process()
        self.start = self.peak = self._process.memory_info().rss
        self.start_parts = self.peak_parts = _rss_parts()
        self._stop, self._paused = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self):
        while not self._stop.wait(0.02):
            if not self._paused.is_set():
                rss = self._process.memory_info().rss
                if rss > self.peak:
                    self.peak, self.peak_parts = rss, _rss_parts()

    def unmeasured(self, fn):
        """`fn` with sampling paused while it runs: yardsticks and evaluations are not the arm's memory."""
        def call(*args, **kwargs):
            self._paused.set()
            try:
                return fn(*args, **kwargs)
            finally:
                self._paused.clear()
        return call

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    @property
    def growth(self) -> int:
        return self.peak - self.start

    def growth_of(self, kind: str) -> int | None:
        """Growth of "file" or "anon" pages from entry to the peak; None where /proc does not say."""
        if kind not in self.start_parts or kind not in self.peak_parts:
            return None
        return self.peak_parts[kind] - self.start_parts[kind]


class _Unmeasured:
    """An evaluator (with its yardsticks) whose calls the arm's RSS peak leaves out."""

    def __init__(self, inner, rss: RssPeak):
        self.inner, self.rss = inner, rss

    def __call__(self, *args, **kwargs):
        return self.rss.unmeasured(self.inner)(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)
