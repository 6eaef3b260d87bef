"""The four roles a method can take; each fixes what the method receives from its stage
(typed `Inputs`), which params section lists its runs and which stage trains them. See
`bowflow.roles.base` for the table. A method module imports only its own role, so editing
one role reruns only the runs of methods that take it."""
