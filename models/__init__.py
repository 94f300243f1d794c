"""Models and what trains them: networks (each declaring the plug-in hooks of ``models.base``), their
device-side input steps, losses and semi-supervised methods. Built and loaded by name via
``models.registry``; the output layouts are data in tasks.py."""
