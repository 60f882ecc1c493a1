from django.contrib import admin
from django.urls import path, re_path

from outbox.api import api_not_found, invoke_view, schedule_view, scheduled_run_view
from outbox.messaging_api import ack_view, nack_view, publish_view, receive_view, send_view
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
    # Topic and queue names: letters, digits and _ . : - (picloud/messaging/names.py);
    # any other name is the views' 404, like an unknown one.
    path(
        "api/apps/<slug:app_slug>/topics/<str:topic>/publish",
        publish_view,
        name="publish-topic",
    ),
    path(
        "api/apps/<slug:app_slug>/queues/<str:queue>/messages",
        send_view,
        name="queue-send",
    ),
    path(
        "api/apps/<slug:app_slug>/queues/<str:queue>/receive",
        receive_view,
        name="queue-receive",
    ),
    path("api/apps/<slug:app_slug>/queues/<str:queue>/ack", ack_view, name="queue-ack"),
    path("api/apps/<slug:app_slug>/queues/<str:queue>/nack", nack_view, name="queue-nack"),
    re_path(r"^api/", api_not_found),
]
