import os

from django.core.asgi import get_asgi_application

from picloud import config

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
application = get_asgi_application()
# A server runs no system checks: a bad PICLOUD_* value stops it here, as
# it loads, rather than failing requests (picloud/checks.py reports the same).
config.build_all()
