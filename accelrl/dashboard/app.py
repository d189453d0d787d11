"""The Bokeh application: which page a browser session gets, and its periodic refresh.

``/`` shows the run list; ``/?run=ID`` the page of one run; ``/?run=A&run=B`` several
evaluations side by side. Each session refreshes its page every ``poll_ms``: the page's
followers read what was appended to the run's files since the last read (shared between
sessions), and the page streams the new rows to the browser. An exception while reading or
drawing is shown on the page and logged; it never ends the session or the server. A run that
is not (yet) found is waited for.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable
from typing import Any

from bokeh.document import Document
from bokeh.layouts import column
from bokeh.models import Div

from accelrl.dashboard.data.deploy import DeployFollower
from accelrl.dashboard.data.evaluation import EvaluationFollower
from accelrl.dashboard.data.store import RunStore
from accelrl.dashboard.data.training import TrainingFollower
from accelrl.dashboard.data.tuning import TuningFollower
from accelrl.dashboard.discovery import RunInfo, RunKind
from accelrl.dashboard.pages.common import FONT, Page, esc, nav

_log = logging.getLogger(__name__)
#: Most runs one page shows side by side.
MAX_COMPARED = 8


class WaitingPage(Page):
    """Shown for run ids that name no run (yet): checks again until they appear.

    :param store: The dashboard's runs.
    :param run_ids: What the URL asked for.
    :param reason: Why it cannot be shown now.
    """

    interval_s = 1.0

    def __init__(self, store: RunStore, run_ids: list[str], reason: str) -> None:
        super().__init__()
        self.store, self.run_ids, self.reason = store, run_ids, reason
        self.title = "accelrl dashboard: waiting"

    def build(self) -> Any:
        self.text = Div(
            text=(
                f"<div data-field='waiting' style='{FONT}'>{esc(self.reason)}<br>This page "
                "checks again every second and shows the run when it appears.</div>"
            ),
            sizing_mode="stretch_width",
        )
        self.layout = column(nav("waiting for a run"), self.text, sizing_mode="stretch_width")
        return self.layout

    def refresh(self) -> None:
        return None

    def ready(self) -> bool:
        """Whether every asked-for run exists now."""
        return all(self.store.lookup(r, force=True) is not None for r in self.run_ids)


def run_page(store: RunStore, infos: list[RunInfo]) -> Page:
    """The page of one run, or of several evaluations."""
    if len(infos) > 1 or infos[0].kind is RunKind.evaluation:
        from accelrl.dashboard.pages.evaluation import EvaluationPage

        followers = [store.follower(i) for i in infos]
        assert all(isinstance(f, EvaluationFollower) for f in followers)
        return EvaluationPage(infos, followers)  # type: ignore[arg-type]
    info = infos[0]
    follower = store.follower(info)
    if info.kind is RunKind.deploy:
        from accelrl.dashboard.pages.deploy import DeployPage

        assert isinstance(follower, DeployFollower)
        return DeployPage(info, follower)
    if info.kind is RunKind.tuning:
        from accelrl.dashboard.pages.tuning import TuningPage

        assert isinstance(follower, TuningFollower)
        return TuningPage(info, follower, store)
    from accelrl.dashboard.pages.training import TrainingPage

    assert isinstance(follower, TrainingFollower)
    return TrainingPage(info, follower)


def choose_page(store: RunStore, run_ids: list[str]) -> Page:
    """The page for the ``run`` arguments of a request."""
    from accelrl.dashboard.pages.index import IndexPage

    if not run_ids:
        return IndexPage(store)
    run_ids = list(dict.fromkeys(run_ids))[:MAX_COMPARED]
    infos = [store.lookup(r, force=True) for r in run_ids]
    missing = [r for r, i in zip(run_ids, infos, strict=True) if i is None]
    if missing:
        return WaitingPage(
            store, run_ids, f"No run {', '.join(missing)} under the dashboard's folders (yet)."
        )
    found = [i for i in infos if i is not None]
    if len(found) > 1 and any(i.kind is not RunKind.evaluation for i in found):
        return WaitingPage(
            store, [], "Only evaluations can be shown side by side; open the other runs alone."
        )
    return run_page(store, found)


class PageHost:
    """Keeps the page of one browser session up to date.

    :param doc: The session's document.
    :param make: Builds the page (again when its structure changes, its data start over,
        or a failed build is retried).
    """

    #: Wait between retries of a page whose build failed [s].
    retry_s = 2.0

    def __init__(self, doc: Document, make: Callable[[], Page]) -> None:
        self.doc = doc
        self.make = make
        self.error = Div(sizing_mode="stretch_width")
        self.page: Page | None = None
        self.signature: Any = None
        self.generation: Any = None
        self._last = 0.0
        self._install()

    def _install(self) -> None:
        """Build the page afresh and make it the document's content."""
        try:
            page = self.make()
            page.poll()
            built = page.build()
            roots = list(built) if isinstance(built, list) else [built]
            page.refresh()
            self.page = page
            self.signature, self.generation = page.signature(), page.generation()
            title = page.title
        except Exception as err:  # a broken run must not break the session
            self.page = None
            roots = [Div(text=self._error_html(err), sizing_mode="stretch_width")]
            title = "accelrl dashboard: error"
        self.error = Div(sizing_mode="stretch_width")
        self.doc.clear()
        for root in [*roots, self.error]:
            self.doc.add_root(root)
        self.doc.title = title

    @staticmethod
    def _error_html(err: BaseException) -> str:
        _log.warning("dashboard page failed:\n%s", traceback.format_exc())
        return (
            f"<div data-field='error' style='{FONT}background:#ffebe9;border:1px solid #cf222e;"
            f"padding:6px 12px;border-radius:6px'><b>This page could not be drawn</b>: "
            f"{esc(type(err).__name__)}: {esc(err)}. It tries again shortly.</div>"
        )

    def tick(self) -> None:
        """Periodic update: read, rebuild when the structure changed, refresh."""
        page = self.page
        now = time.monotonic()
        interval = self.retry_s if page is None else page.interval_s
        if now - self._last < interval:
            return
        self._last = now
        if page is None:
            self._install()
            return
        try:
            if isinstance(page, WaitingPage):
                if page.ready():
                    self._install()
                return
            page.poll()
            if page.signature() != self.signature or page.generation() != self.generation:
                self._install()
                return
            page.refresh()
            if self.error.text:
                self.error.text = ""
        except Exception as err:
            self.error.text = self._error_html(err)


def make_document_factory(store: RunStore, poll_ms: int) -> Callable[[Document], None]:
    """The function that fills each new browser session's document."""

    def modify(doc: Document) -> None:
        args = doc.session_context.request.arguments if doc.session_context else {}
        run_ids = [v.decode("utf-8", "replace") for v in args.get("run", [])]
        host = PageHost(doc, lambda: choose_page(store, run_ids))
        doc.add_periodic_callback(host.tick, poll_ms)

    return modify
