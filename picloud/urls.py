from django.contrib import admin
from django.urls import path

from outbox.api import invoke_view
from outbox.prometheus import metrics_view

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),
    path(
        "api/apps/<slug:app_slug>/scripts/<str:script_name>/invoke",
        invoke_view,
        name="invoke-script",
    ),
]
