import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "picloud.settings")
application = get_wsgi_application()

if settings.DEBUG:
    # Development (`make run`): serve the admin's CSS and JS from the apps, as
    # runserver would. In production a proxy serves `collectstatic`'s output.
    from django.contrib.staticfiles.handlers import StaticFilesHandler

    application = StaticFilesHandler(application)
