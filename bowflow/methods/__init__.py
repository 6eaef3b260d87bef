"""The methods: one module per method (its params, views, head and loss), each a subclass
of a role in bowflow/roles/ registered by name. The registry (`bowflow.roles.base`)
imports a module only when a run names its method, so a training stage runs, and depends
on, its own method's file and no other method's."""
