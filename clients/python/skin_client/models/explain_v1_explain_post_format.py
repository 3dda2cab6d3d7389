from enum import StrEnum


class ExplainV1ExplainPostFormat(StrEnum):
    JSON = "json"
    PNG = "png"

    def __str__(self) -> str:
        return str(self.value)
