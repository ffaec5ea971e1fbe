"""queen-rbee: the public OpenAI API, scheduler, hive registry and SSE relay of rbee."""
