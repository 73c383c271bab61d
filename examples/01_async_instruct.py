# Seed sample "Async methods", with `mellea` replaced by `mellea_actors`.
# Requires: mellea_actors
# Returns: None
import asyncio

import mellea_actors


async def main():
    m = mellea_actors.start_session()
    result = await m.ainstruct("Write a haiku about concurrency.")
    print(str(result))
    # Output will vary — LLM responses depend on model and temperature.


asyncio.run(main())
