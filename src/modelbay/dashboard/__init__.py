"""The dashboard: a web UI that modelbay serves itself at `/`, offline (every asset in the package).

  GET /                        the dashboard (static/index.html): models, versions and states,
                               live charts, a playground per model, the admin actions
  GET /docs                    the interactive API reference: Swagger UI over /openapi.json
  GET /dashboard/static/...    its scripts, styles and the vendored libraries (static/vendor/)
  GET /dashboard/api/summary   what the page polls (summary.py)

Plain HTML, CSS and JavaScript modules, no build step. The page reads the server's own APIs
(the summary, OIP model metadata, the model repository extension) with the API key typed into
it, kept in the tab's sessionStorage and sent as `Authorization: Bearer`.
"""

from modelbay.dashboard.routes import dashboard_routes

__all__ = ["dashboard_routes"]
