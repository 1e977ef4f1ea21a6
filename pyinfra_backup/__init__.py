"""Pure helpers shared by facts/ and tasks/: argv and env builders, parsers, schedules, validation.

Nothing in this package talks to a host; everything here is unit-testable.
"""
