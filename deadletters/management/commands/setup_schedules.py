from django.core.management.base import BaseCommand

from deadletters.schedules import SCHEDULE_NAME, ensure_schedules


class Command(BaseCommand):
    help = "Create (or repair) PiCloud's django-q2 schedules; running it again changes nothing."

    def handle(self, *args, **options):
        changed = ensure_schedules()
        state = "created or repaired" if changed else "already in place"
        self.stdout.write(f"Schedule {SCHEDULE_NAME!r}: {state}.")
