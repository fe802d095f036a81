"""URLs: send a task, read its result."""

from __future__ import annotations

from django.urls import path

from examples.django_app.shop import views

urlpatterns = [
    path("orders/total/", views.order_total_view),
    path("results/<str:task_id>/", views.result),
]
