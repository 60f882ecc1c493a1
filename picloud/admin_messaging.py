"""Admin for an app's messaging sources: topics and queues (picloud.messaging).

Whoever may see an app's topics and queues (QueueRead: its viewers too)
sees their pages; creating and deleting them and purging a queue need
AppManageMessaging, moving a queue's dead letters back onto it
AppDeadLetterManage (both the app's admins). Every write goes through the
Python API (picloud.messaging.topics and .queues, deadletters.resolve),
never the ORM: its rules, messages and capability checks are admin's too.
A name is fixed once created (the API renames nothing), so the change pages
only show: a queue's with its counts and the two actions.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Iterable

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import unquote
from django.contrib.postgres.expressions import ArraySubquery
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import (
    BooleanField,
    Case,
    Count,
    Func,
    IntegerField,
    OuterRef,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from deadletters.models import DeadLetter
from deadletters.resolve import postgres_resolver
from outbox.models import OutboxEntry
from outbox.storage.kinds import SourceKind
from picloud.admin_access import ALL, AppFilter, AppScopedAdmin, allowed_app_ids, holds_in, scope
from picloud.admin_counts import FIGURE_EXACT_UP_TO, bounded
from picloud.domain.authz import Capability, _AppCapability
from picloud.messaging import queues, topics
from picloud.messaging.names import NAME_RULE, validate_name
from picloud.models import App, Queue, QueueMessage, Topic
from triggers.kinds import TriggerKind
from triggers.matching import collection_matches
from triggers.models import QueueTriggerDetails
from triggers.pg_repository import PgTriggerRepo
from triggers.repository import TriggerRecord

SHOWN_SUBSCRIBERS = 5  # trigger names a topic's row lists; the rest are counted


def holds(request, capability: type[_AppCapability]):
    """Whether the row's app is one where the user holds `capability`, as a
    column: display methods (which get no request) decide links by it."""
    ids = allowed_app_ids(request, capability)
    if ids is ALL:
        return Value(True)
    return Case(
        When(app_id__in=ids, then=Value(True)),
        default=Value(False),
        output_field=BooleanField(),
    )


def count_of(rows) -> Func:
    """`rows` (filtered on one topic or queue by an OuterRef) counted up to
    FIGURE_EXACT_UP_TO + 1, as a column: each count one index range, read
    no further (dead_letters_unresolved_topic_idx and _queue_idx,
    outbox_pubsub_topic_idx)."""
    capped = ArraySubquery(rows.order_by().values("pk")[: FIGURE_EXACT_UP_TO + 1])
    return Func(capped, function="cardinality", output_field=IntegerField())


def shown(counted: int) -> int | str:
    """A count_of column as shown: exact, or "more than FIGURE_EXACT_UP_TO".
    Not the planner's estimate: it has no statistics on a payload key that
    only a partial index holds, and guesses a fixed share of the rows."""
    return bounded(counted).display()


def with_payload_key(rows, key: str):
    return rows.annotate(payload_key=KeyTextTransform(key, "payload"))


def deliveries_of_topic(app_id, name):
    """The outbox rows of a topic's publishes (`app_id` and `name` values or OuterRefs)."""
    return with_payload_key(
        OutboxEntry.objects.filter(app_id=app_id, source_kind=SourceKind.PUBSUB), "topic"
    ).filter(payload_key=name)


def unresolved_letters_of_topic(app_id, name):
    """The unresolved dead letters of a topic's deliveries (its payload names the topic)."""
    return with_payload_key(
        DeadLetter.objects.filter(
            app_id=app_id, source_kind=SourceKind.PUBSUB, resolution__isnull=True
        ),
        "topic",
    ).filter(payload_key=name)


def unresolved_letters_of_queue(app_id, queue_id):
    """The unresolved dead letters of a queue's messages (the settle writes
    the queue's id in each letter's payload), `queue_id` as text."""
    return with_payload_key(
        DeadLetter.objects.filter(
            app_id=app_id, source_kind=SourceKind.QUEUE, resolution__isnull=True
        ),
        "queue_id",
    ).filter(payload_key=queue_id)


def age(seconds: float) -> str:
    """A duration as an operator reads it: the two largest units."""
    seconds = max(int(seconds), 0)
    days, rest = divmod(seconds, 86_400)
    hours, rest = divmod(rest, 3_600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "min"), (secs, "s")]
    while len(parts) > 1 and parts[0][0] == 0:
        parts.pop(0)
    return " ".join(f"{n} {unit}" for n, unit in parts[:2])


def trigger_link(obj, trigger_id: uuid.UUID, label: str) -> str:
    """A link to the trigger's page when the user manages the app's
    triggers (the row's manages_triggers column), else its name."""
    if getattr(obj, "manages_triggers", False):
        url = reverse("admin:triggers_trigger_change", args=[trigger_id])
        return format_html('<a href="{}">{}</a>', url, label)
    return format_html("{}", label)


class NameForm(forms.ModelForm):
    """A new topic's or queue's app and name, checked as the Python API
    checks them, with its messages."""

    what = ""  # "topic" or "queue", as picloud.messaging.names.validate_name calls it
    model_class: type[Topic | Queue]

    name = forms.CharField(
        widget=forms.TextInput(attrs={"size": 60}),
        help_text=f"{NAME_RULE}; e.g. orders:created",
        error_messages={
            "required": f"Give a name; allowed: {NAME_RULE}.",
            "null_characters_not_allowed": f"A name cannot hold a NUL character; allowed: "
            f"{NAME_RULE}.",
        },
    )

    def clean(self):
        cleaned = super().clean()
        app, name = cleaned.get("app"), cleaned.get("name")
        if name is not None:
            try:
                validate_name(self.what, name)
            except ValidationError as e:
                self.add_error(None, e)  # keyed by "name"
        # The API's message (create_* raises the same NameTaken); a name with
        # an error is left out of Django's own unique check, so it is said once.
        taken = self.model_class.objects.filter(app=app, name=name)
        if app is not None and "name" not in self.errors and taken.exists():
            self.add_error(None, topics.NameTaken(self.what, app, name))
        return cleaned


class TopicForm(NameForm):
    what, model_class = "topic", Topic

    class Meta:
        model = Topic
        fields = ["app", "name"]


class QueueForm(NameForm):
    what, model_class = "queue", Queue

    class Meta:
        model = Queue
        fields = ["app", "name"]


class MessagingAdmin(AppScopedAdmin):
    """What topics and queues share: seen with QueueRead, created and
    deleted with AppManageMessaging through the API, never edited."""

    app_capability = Capability.QueueRead
    manage_capability = Capability.AppManageMessaging
    list_filter = [AppFilter]
    search_fields = ["name", "app__slug"]
    ordering = ["app__slug", "name"]
    delete_confirmation_template = "admin/picloud/messaging/delete_confirmation.html"
    delete_selected_confirmation_template = (
        "admin/picloud/messaging/delete_selected_confirmation.html"
    )

    def manages(self, request, obj=None) -> bool:
        return holds_in(request, self.manage_capability, None if obj is None else obj.app_id)

    def has_add_permission(self, request):
        return self.manages(request)

    def has_change_permission(self, request, obj=None):
        return False  # nothing to edit: a name is fixed once created

    def has_delete_permission(self, request, obj=None):
        return self.manages(request, obj)

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        field = super().formfield_for_foreignkey(db_field, request, **kwargs)
        if db_field.name == "app":
            # Created only in apps where the user may create them, not in
            # every app the page shows (the viewers' too).
            ids = allowed_app_ids(request, self.manage_capability)
            field.queryset = scope(App.objects.all(), ids, "id")
        return field

    def get_queryset(self, request):
        return (
            super()
            .get_queryset(request)
            .annotate(manages_triggers=holds(request, Capability.AppManageTriggers))
        )

    # The API's calls, each (app, name, principal=...).
    def create(self, app: App, name: str, *, principal):
        raise NotImplementedError

    def delete(self, app: App, name: str, *, principal) -> bool:
        raise NotImplementedError

    def save_model(self, request, obj, form, change):
        created = self.create(obj.app, obj.name, principal=self.principal(request))
        # Django goes on with this object (the log entry, the redirect, the
        # message): make it the stored row.
        obj.pk, obj.created_at = created.id, created.created_at
        obj._state.adding = False

    def delete_model(self, request, obj):
        self.delete(obj.app, obj.name, principal=self.principal(request))

    @transaction.atomic
    def delete_queryset(self, request, queryset):
        # All or none: a refusal (a queue in use) undoes the others too.
        principal = self.principal(request)
        for obj in queryset.select_related("app"):
            self.delete(obj.app, obj.name, principal=principal)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except topics.NameTaken as e:
            # Taken by someone else between the form's check and the insert.
            self.message_user(request, " ".join(e.messages), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def get_deleted_objects(self, objs, request):
        """Each object with what goes along (say, a queue's messages) under
        it, without listing every message; a notice of what stays travels
        on the request to the templates in admin/picloud/messaging/."""
        objs = list(objs)
        request.picloud_delete_notice = self.delete_notice(objs)
        along, counted = self.goes_along(objs)
        opts = self.model._meta
        deleted = []
        for obj in objs:
            url = reverse(f"admin:picloud_{opts.model_name}_change", args=[obj.pk])
            deleted.append(format_html('{}: <a href="{}">{}</a>', opts.verbose_name, url, obj))
            if along.get(obj.pk):
                deleted.append(along[obj.pk])
        counts = {opts.verbose_name_plural: len(objs), **counted}
        perms_needed = {
            opts.verbose_name for obj in objs if not self.has_delete_permission(request, obj)
        }
        return deleted, counts, perms_needed, self.blocking(objs)

    def delete_notice(self, objs: list) -> str:
        return ""

    def goes_along(self, objs: list) -> tuple[dict[uuid.UUID, list[str]], dict[str, int]]:
        """What is deleted with each object, and those rows counted by kind."""
        return {}, {}

    def blocking(self, objs: list) -> list[str]:
        return []


def subscribers_by_topic(topic_rows: Iterable[Topic]) -> dict[uuid.UUID, list[TriggerRecord]]:
    """The enabled pub/sub triggers each topic delivers to, by the matching
    rule of publish (collection_matches): one read per app, not per topic."""
    by_app: dict[uuid.UUID, list[Topic]] = defaultdict(list)
    for topic in topic_rows:
        by_app[topic.app_id].append(topic)
    found = {}
    repository = PgTriggerRepo()
    for app_id, app_topics in by_app.items():
        subscribed = [
            t
            for t in repository.list_for_app(app_id, kind=TriggerKind.PUBSUB)
            if t.enabled and t.pubsub is not None
        ]
        for topic in app_topics:
            found[topic.pk] = [
                t for t in subscribed if collection_matches(t.pubsub.topic, topic.name)
            ]
    return found


@admin.register(Topic)
class TopicAdmin(MessagingAdmin):
    form = TopicForm
    list_display = [
        "name",
        "app",
        "subscribers",
        "pending_deliveries",
        "unresolved_dead_letters",
        "created_at",
    ]
    list_select_related = ["app"]
    readonly_fields = ["created_at", "subscribers", "pending_deliveries", "unresolved_dead_letters"]

    def create(self, app, name, *, principal):
        return topics.create_topic(app, name, principal=principal)

    def delete(self, app, name, *, principal):
        return topics.delete_topic(app, name, principal=principal)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": ["app", "name"]})]
        return [
            (None, {"fields": ["app", "name", "created_at"]}),
            (
                "Deliveries (counted when the page loads)",
                {"fields": ["subscribers", "pending_deliveries", "unresolved_dead_letters"]},
            ),
        ]

    def get_queryset(self, request):
        deliveries = deliveries_of_topic(OuterRef("app_id"), OuterRef("name"))
        letters = unresolved_letters_of_topic(OuterRef("app_id"), OuterRef("name"))
        return (
            super()
            .get_queryset(request)
            .annotate(pending_count=count_of(deliveries), letter_count=count_of(letters))
        )

    def get_changelist_instance(self, request):
        cl = super().get_changelist_instance(request)
        # The page's topics, read once (the template iterates the same,
        # now cached, rows).
        found = subscribers_by_topic(cl.result_list)
        for topic in cl.result_list:
            topic.subscriber_records = found[topic.pk]
        return cl

    @admin.display(description="subscribers (enabled pub/sub triggers)")
    def subscribers(self, obj: Topic) -> str:
        records = getattr(obj, "subscriber_records", None)
        if records is None:
            records = subscribers_by_topic([obj])[obj.pk]
        if not records:
            return "none: a publish delivers to nobody"
        shown = format_html_join(
            ", ", "{}", ((trigger_link(obj, t.id, t.name),) for t in records[:SHOWN_SUBSCRIBERS])
        )
        more = len(records) - SHOWN_SUBSCRIBERS
        return format_html(
            "{}: {}{}", len(records), shown, f", and {more} more" if more > 0 else ""
        )

    @admin.display(description="deliveries pending", ordering="pending_count")
    def pending_deliveries(self, obj: Topic) -> int | str:
        return shown(obj.pending_count)

    @admin.display(description="unresolved dead letters", ordering="letter_count")
    def unresolved_dead_letters(self, obj: Topic) -> int | str:
        return shown(obj.letter_count)

    def delete_notice(self, objs):
        # Counted to the last row: the operator is about to delete.
        pending = sum(deliveries_of_topic(t.app_id, t.name).count() for t in objs)
        notice = f"{pending} pending delivery row(s) of it will still run." if pending else ""
        found = subscribers_by_topic(objs)
        names = sorted({t.name for topic in objs for t in found[topic.pk]})
        if names:
            shown = ", ".join(names[:SHOWN_SUBSCRIBERS])
            more = (
                f" and {len(names) - SHOWN_SUBSCRIBERS} more"
                if len(names) > SHOWN_SUBSCRIBERS
                else ""
            )
            notice += (
                f" Pub/sub trigger(s) {shown}{more} subscribe to it: they stay, and get "
                "nothing from it (publishing to a deleted topic is refused) until a topic of "
                "that name is created again."
            )
        return notice.strip()


@admin.register(Queue)
class QueueAdmin(MessagingAdmin):
    form = QueueForm
    list_display = [
        "name",
        "app",
        "depth",
        "visible",
        "delayed",
        "in_flight",
        "oldest_message_age",
        "unresolved_dead_letters",
        "consumer_trigger",
    ]
    list_select_related = ["app", "consumer__trigger"]
    readonly_fields = [
        "created_at",
        "depth",
        "visible",
        "delayed",
        "in_flight",
        "oldest_message_age",
        "unresolved_dead_letters",
        "consumer_trigger",
    ]
    change_form_template = "admin/picloud/queue/change_form.html"

    def create(self, app, name, *, principal):
        return queues.create_queue(app, name, principal=principal)

    def delete(self, app, name, *, principal):
        return queues.delete_queue(app, name, principal=principal)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return [(None, {"fields": ["app", "name"]})]
        return [
            (None, {"fields": ["app", "name", "created_at", "consumer_trigger"]}),
            (
                "Messages (counted when the page loads)",
                {"fields": ["depth", "visible", "delayed", "in_flight", "oldest_message_age"]},
            ),
            ("Failures", {"fields": ["unresolved_dead_letters"]}),
        ]

    def get_queryset(self, request):
        letters = unresolved_letters_of_queue(OuterRef("app_id"), Cast(OuterRef("pk"), TextField()))
        return super().get_queryset(request).annotate(letter_count=count_of(letters))

    # The counts: queue_stats, once per row for all five columns.

    def stats(self, obj: Queue) -> queues.QueueStats:
        if not hasattr(obj, "picloud_stats"):
            obj.picloud_stats = queues.queue_stats(obj.pk)
        return obj.picloud_stats

    @admin.display(description="depth")
    def depth(self, obj):
        return self.stats(obj).depth

    @admin.display(description="visible")
    def visible(self, obj):
        return self.stats(obj).visible

    @admin.display(description="delayed")
    def delayed(self, obj):
        return self.stats(obj).delayed

    @admin.display(description="in flight")
    def in_flight(self, obj):
        return self.stats(obj).in_flight

    @admin.display(description="oldest message")
    def oldest_message_age(self, obj):
        sent = self.stats(obj).oldest_sent_at
        if sent is None:
            return "—"
        return f"{age((timezone.now() - sent).total_seconds())} old"

    @admin.display(description="unresolved dead letters", ordering="letter_count")
    def unresolved_dead_letters(self, obj):
        return shown(obj.letter_count)

    @admin.display(description="consumer trigger")
    def consumer_trigger(self, obj):
        details = getattr(obj, "consumer", None)
        if details is None:
            return "none: messages wait for a consumer"
        return trigger_link(obj, details.trigger_id, details.trigger.name)

    # Deleting.

    def delete_notice(self, objs):
        # Counted to the last letter: the operator is about to delete.
        letters = sum(unresolved_letters_of_queue(q.app_id, str(q.pk)).count() for q in objs)
        if not letters:
            return ""
        return (
            f"{letters} unresolved dead letter(s) of its messages stay; they cannot be moved "
            "back onto a deleted queue."
        )

    def goes_along(self, objs):
        # Counted, not listed: Django would list every message.
        rows = QueueMessage.objects.filter(queue__in=objs).values("queue_id")
        counts = dict(rows.annotate(n=Count("pk")).values_list("queue_id", "n"))
        along = {obj.pk: [f"{counts.get(obj.pk, 0)} message(s) on it"] for obj in objs}
        return along, {"queue messages": sum(counts.values())}

    def blocking(self, objs):
        """The queue triggers consuming these queues (delete_queue refuses
        while one does), each linked to where it changes."""
        consumers = QueueTriggerDetails.objects.filter(queue__in=objs).select_related(
            "trigger__app", "queue__app"
        )
        return [
            format_html(
                'Queue {} is consumed by trigger <a href="{}">{}</a>: delete that trigger or '
                "point it at another queue first.",
                d.queue,
                reverse("admin:triggers_trigger_change", args=[d.trigger_id]),
                d.trigger,
            )
            for d in consumers
        ]

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except queues.QueueInUse as e:
            # A consumer added since the page was checked: said, not a 500.
            self.message_user(request, " ".join(e.messages), messages.ERROR)
            return HttpResponseRedirect(request.path)

    def changelist_view(self, request, extra_context=None):
        try:
            return super().changelist_view(request, extra_context)
        except queues.QueueInUse as e:  # the bulk delete, as delete_view
            self.message_user(request, " ".join(e.messages), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    # The change page's actions: purge, and move the dead letters back.

    def may_purge(self, request, queue) -> bool:
        return self.manages(request, queue)

    def may_move_back(self, request, queue) -> bool:
        ids = allowed_app_ids(request, Capability.AppDeadLetterManage)
        return ids is ALL or queue.app_id in ids

    def get_urls(self):
        wrap = self.admin_site.admin_view
        return [
            path("<path:object_id>/purge/", wrap(self.purge_view), name="picloud_queue_purge"),
            path(
                "<path:object_id>/move-back/",
                wrap(self.move_back_view),
                name="picloud_queue_move_back",
            ),
            *super().get_urls(),
        ]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        queue = self.get_object(request, unquote(object_id))
        extra_context = {
            **(extra_context or {}),
            "may_purge": self.may_purge(request, queue),
            "may_move_back": self.may_move_back(request, queue),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def purge_view(self, request, object_id):
        """A confirmation stating how many messages go; then the API's purge.
        The count confirmed is checked again: if messages came or went
        meanwhile, the page asks again with the new count."""
        queue = self.get_object(request, unquote(object_id))  # another app's: 404
        if not self.may_purge(request, queue):
            raise PermissionDenied
        stats = queues.queue_stats(queue.pk)
        confirmed = request.method == "POST" and request.POST.get("confirm") == "yes"
        changed = confirmed and request.POST.get("count") != str(stats.depth)
        if confirmed and not changed:
            purged = queues.purge(queue.app, queue.name, principal=self.principal(request))
            self.message_user(
                request, f"Purged queue {queue}: {purged} message(s) deleted.", messages.SUCCESS
            )
            return self._back_to(queue)
        return self._confirm(
            request,
            queue,
            "purge",
            title=f"Purge queue {queue}",
            count=stats.depth,
            stats=stats,
            changed=changed,
        )

    def move_back_view(self, request, object_id):
        """Replay every unresolved dead letter of the queue's messages: each
        goes back on the queue as a new message (deadletters.resolve)."""
        queue = self.get_object(request, unquote(object_id))
        if not self.may_move_back(request, queue):
            raise PermissionDenied
        letters = unresolved_letters_of_queue(queue.app_id, str(queue.pk))
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            ids = list(letters.order_by("created_at").values_list("pk", flat=True))
            report = postgres_resolver().replay_all(ids, self.principal(request).pk)
            self._report_move_back(request, queue, report)
            return self._back_to(queue)
        return self._confirm(
            request,
            queue,
            "move back",
            title=f"Move dead letters back onto queue {queue}",
            count=letters.count(),
            has_consumer=hasattr(queue, "consumer"),
        )

    def _report_move_back(self, request, queue, report) -> None:
        done = f"Moved {len(report.done)} dead letter(s) back onto queue {queue}"
        level = messages.SUCCESS if not report.refused else messages.WARNING
        self.message_user(request, report.summary(done), level)

    def _back_to(self, queue) -> HttpResponseRedirect:
        return HttpResponseRedirect(reverse("admin:picloud_queue_change", args=[queue.pk]))

    def _confirm(self, request, queue, verb: str, **context) -> TemplateResponse:
        return TemplateResponse(
            request,
            "admin/picloud/queue/confirm.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.model._meta,
                "object": queue,
                "verb": verb,
                "back": reverse("admin:picloud_queue_change", args=[queue.pk]),
                **context,
            },
        )
