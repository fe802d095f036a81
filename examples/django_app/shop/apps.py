"""The application's config."""

from __future__ import annotations

from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "examples.django_app.shop"
    label = "shop"
