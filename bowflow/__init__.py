"""bowflow: teacher-student representation learning as a cached pipeline. The library the
stages (`stages/`) call: data, networks, methods on their roles, training, evaluation,
vocabularies, reports. docs/ARCHITECTURE.md maps it."""
