"""Admin for the mail an app received (picloud.mail.inbound): who sent it,
to which addresses, what it fired; the raw message downloadable.

Whoever may read an app's mail (EmailRead: its viewers too) sees its rows;
nobody adds or edits them, and the retention sweep deletes them
(PICLOUD_EMAIL_RETENTION_DAYS). Outbound mail is outbox rows and dead
letters of source ``email_send``, on those pages.
"""

from __future__ import annotations

from django.contrib import admin
from django.contrib.admin.utils import unquote
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from picloud.admin_access import AppFilter, AppScopedAdmin, WrittenBySystem
from picloud.domain.authz import Capability
from picloud.mail.parse import parse_message
from picloud.models import InboundEmail
from picloud.text import truncate

PREVIEW_BYTES = 65_536  # of the parsed message shown on a message's page
PREVIEW_CHARS = 5_000  # of its text body


def size_text(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KiB"
    return f"{size / 1024 / 1024:.1f} MiB"


@admin.register(InboundEmail)
class InboundEmailAdmin(WrittenBySystem, AppScopedAdmin):
    app_capability = Capability.EmailRead
    list_display = [
        "received_at",
        "app",
        "from_header",
        "short_subject",
        "size_shown",
        "fired_triggers",
    ]
    list_filter = [AppFilter]
    list_select_related = ["app"]
    search_fields = ["subject", "from_header", "mail_from", "message_id"]
    ordering = ["-received_at"]
    fields = [
        "app",
        "received_at",
        "mail_from",
        "rcpt_to",
        "from_header",
        "subject",
        "message_id",
        "size_shown",
        "peer",
        "fired_triggers",
        "raw_link",
        "attachments",
        "text_preview",
    ]
    readonly_fields = fields

    def get_queryset(self, request):
        # The list never loads the raw messages (megabytes each).
        return super().get_queryset(request).defer("raw")

    def has_change_permission(self, request, obj=None):
        return False

    @admin.display(description="subject")
    def short_subject(self, obj: InboundEmail) -> str:
        return truncate(obj.subject or "(no subject)", 80)

    @admin.display(description="size")
    def size_shown(self, obj: InboundEmail) -> str:
        return size_text(obj.size)

    @admin.display(description="triggers fired")
    def fired_triggers(self, obj: InboundEmail):
        if not obj.fired:
            return "none"
        return format_html_join(
            ", ",
            '<a href="{}">{}</a>',
            (
                (reverse("admin:triggers_trigger_change", args=[f["trigger_id"]]), f["name"])
                for f in obj.fired
            ),
        )

    @admin.display(description="raw message")
    def raw_link(self, obj: InboundEmail):
        url = reverse("admin:picloud_inboundemail_raw", args=[obj.pk])
        return format_html('<a href="{}">download (.eml, {})</a>', url, size_text(obj.size))

    def _parsed(self, obj: InboundEmail) -> dict:
        cached = getattr(obj, "_parsed", None)
        if cached is None:
            cached = obj._parsed = parse_message(bytes(obj.raw), max_event_bytes=PREVIEW_BYTES)
        return cached

    @admin.display(description="attachments")
    def attachments(self, obj: InboundEmail):
        found = self._parsed(obj)["attachments"]
        if not found:
            return "none"
        return format_html_join(
            mark_safe("<br>"),
            "{}: {} ({}, {}, sha256 {})",
            (
                (
                    a["index"],
                    a["filename"] or "(unnamed)",
                    a["content_type"],
                    size_text(a["size"]),
                    a["sha256"][:16],
                )
                for a in found
            ),
        )

    @admin.display(description="text")
    def text_preview(self, obj: InboundEmail):
        parsed = self._parsed(obj)
        text = parsed["text"] if parsed["text"] is not None else parsed["html"]
        if text is None:
            return "(no text or HTML body)"
        # Shown as text, never rendered: the HTML is the sender's.
        return format_html(
            "<pre style='white-space: pre-wrap'>{}</pre>", truncate(text, PREVIEW_CHARS)
        )

    def get_urls(self):
        raw = path(
            "<path:object_id>/raw/",
            self.admin_site.admin_view(self.raw_view),
            name="picloud_inboundemail_raw",
        )
        return [raw, *super().get_urls()]

    def raw_view(self, request, object_id):
        obj = self.get_object(request, unquote(object_id))
        if obj is None:
            raise Http404("no such message")
        if not self.has_view_permission(request, obj):
            raise PermissionDenied
        response = HttpResponse(bytes(obj.raw), content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="{obj.pk}.eml"'
        # The sender's bytes: never sniffed into something a browser runs.
        response["X-Content-Type-Options"] = "nosniff"
        return response
