"""A Django application with tasks (``shop/tasks.py``) and views that send them."""
