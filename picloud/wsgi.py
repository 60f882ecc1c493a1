import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from picloud import config

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
application = get_wsgi_application()
# A server runs no system checks: a bad PICLOUD_* value stops it here, as
# it loads, rather than failing requests (picloud/checks.py reports the same).
config.build_all()

if settings.DEBUG:
    # Development (`make run`): serve the admin's CSS and JS from the apps, as
    # runserver would. In production a proxy serves `collectstatic`'s output.
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    application = StaticFilesHandler(application)
