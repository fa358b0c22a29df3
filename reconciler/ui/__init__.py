"""The status page: a read-only web page of the platform's sync and health.

Served by the daemon (``headwater run``, beside ``/status``) and by ``headwater ui --repo PATH``
(the same page on this machine, computed like ``headwater status``). Pages:

* ``/ui``: every source with its sync, health (and why), freshness against its SLA, dead
  letters and last change (commit, author, date) and apply; searched, filtered and paginated
  on the server (``?q=&health=&sync=&sort=&page=&per=``), so its cost follows the page size;
* ``/ui/sources/<id>``: one source's resources (with Cloud Console links), current drift with
  the commit that set each desired value, the last plan's changes, health reasons, errors and
  job log tails.

Modules: `reconciler.ui.view` (what a page shows, from a status document; pure),
`reconciler.ui.web` (Jinja2 templates under ``templates/``, Starlette routes),
`reconciler.ui.local` (``headwater ui``). No JavaScript, no build step, nothing from a CDN.
"""

from reconciler.ui.web import routes

__all__ = ["routes"]
