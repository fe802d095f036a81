"""Kept for the documented import path ``aqueue.events``; the code is in
:mod:`aqueue.control.events`."""

from aqueue.control.events import EventDispatcher, events

__all__ = ["EventDispatcher", "events"]
