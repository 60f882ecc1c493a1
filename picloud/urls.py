from django.contrib import admin
from django.urls import path, re_path

from outbox.api import api_not_found, invoke_view, schedule_view, scheduled_run_view
from outbox.prometheus import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path(
        "api/apps/<slug:app_slug>/scripts/<str:script_name>/invoke",
        invoke_view,
        name="invoke-script",
    ),
    path(
        "api/apps/<slug:app_slug>/scripts/<str:script_name>/schedule",
        schedule_view,
        name="schedule-script",
    ),
    path(
        "api/apps/<slug:app_slug>/scheduled/<uuid:run_id>",
        scheduled_run_view,
        name="scheduled-run",
    ),
    re_path(r"^api/", api_not_found),
]
