# Seed sample "Streaming", with `mellea` replaced by `mellea_actors`.
# Requires: mellea_actors
# Returns: None
import asyncio

import mellea_actors
from mellea_actors.backends import ModelOption


async def main():
    m = mellea_actors.start_session()
    mot = await m.ainstruct(
        "Write a short story about a robot learning to cook.",
        model_options={ModelOption.STREAM: True},
    )

    # Consume chunks as they arrive
    while not mot.is_computed():
        chunk = await mot.astream()
        print(chunk, end="", flush=True)

    print()  # newline after streaming completes


asyncio.run(main())
# Output will vary — LLM responses depend on model and temperature.
