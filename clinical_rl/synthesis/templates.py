"""Every synthesis prompt, English and Chinese: the reasoning chain, the four search strategies, the guided attempt,
and the two reformat prompts (natural thinking, formal response).

Placeholders are filled with `str.format`; JSON examples live in `CHAIN_FORMAT`, which is passed in as a value,
so its braces are never read as placeholders.
"""

from __future__ import annotations

# The step names stay English in both languages: the search parses them.
FINAL_CONCLUSION, VERIFICATION = "Final Conclusion", "Verification"

CHAIN_FORMAT = {
    "en": (
        "Reply with a single JSON object and nothing else, in this shape:\n"
        '{"CoT": [\n'
        '  {"action": "Inner Thinking", "title": "<short title>", "content": "<one step of reasoning>"},\n'
        "  ...more Inner Thinking steps...,\n"
        '  {"action": "Final Conclusion", "content": "<the conclusion, ending with the line '
        "'Diagnosis: <name>' (for multiple choice: the option letter and its text)>\"},\n"
        '  {"action": "Verification", "content": "<a check of the conclusion against the case findings>"}\n'
        "]}"
    ),
    "zh": (
        "只回复一个 JSON 对象，不要有其他内容，格式如下（action 的取值保持英文）：\n"
        '{"CoT": [\n'
        '  {"action": "Inner Thinking", "title": "<简短标题>", "content": "<一步推理>"},\n'
        "  ……更多 Inner Thinking 步骤……,\n"
        '  {"action": "Final Conclusion", "content": "<结论，最后一行写“诊断：<名称>”（选择题写选项字母及其内容）>"},\n'
        '  {"action": "Verification", "content": "<对照病例表现检查结论>"}\n'
        "]}"
    ),
}

INITIAL = {
    "en": (
        "You are an experienced clinician working through a case. Reason the way a careful physician does: pick out "
        "the findings that matter, weigh the differential diagnosis, and commit to the most likely diagnosis. Split "
        "the reasoning into several 'Inner Thinking' steps with short titles, then give a 'Final Conclusion' and a "
        "'Verification' that checks the conclusion against the case.\n\n"
        "<case>\n{question}\n</case>\n\n{chain_format}"
    ),
    "zh": (
        "你是一名经验丰富的临床医生，正在分析一个病例。请像严谨的医生那样推理：找出关键表现，权衡鉴别诊断，"
        "确定最可能的诊断。把推理分成若干个带简短标题的 'Inner Thinking' 步骤，然后给出 'Final Conclusion'，"
        "再用 'Verification' 对照病例检查这个结论。\n\n"
        "<病例>\n{question}\n</病例>\n\n{chain_format}"
    ),
}

# A strategy continues a chain whose conclusion the verifier rejected; `instruction` is the strategy's own part.
CONTINUATION = {
    "en": (
        "You are an experienced clinician revisiting your own reasoning on a case. Your earlier reasoning is below "
        "as JSON; on review, its final conclusion did not hold up.\n\n"
        "<case>\n{question}\n</case>\n\n<earlier_reasoning>\n{previous}\n</earlier_reasoning>\n\n"
        "{instruction}\n"
        "Write only the new steps that carry the earlier reasoning forward (do not repeat it): new 'Inner Thinking' "
        "steps, a new 'Final Conclusion' and a 'Verification'.\n\n{chain_format}"
    ),
    "zh": (
        "你是一名经验丰富的临床医生，正在复查自己对一个病例的推理。下面是你之前的推理（JSON）；复查发现它的最终结论站不住脚。\n\n"
        "<病例>\n{question}\n</病例>\n\n<之前的推理>\n{previous}\n</之前的推理>\n\n"
        "{instruction}\n"
        "只写接着之前推理往下走的新步骤（不要重复之前的内容）：新的 'Inner Thinking' 步骤、新的 'Final Conclusion' "
        "和一个 'Verification'。\n\n{chain_format}"
    ),
}

STRATEGIES = {
    "exploring_new_paths": {
        "en": "Take a different route: approach the case from an angle the earlier reasoning left out (another organ "
              "system, another mechanism, a finding it passed over) and follow it to a conclusion.",
        "zh": "换一条思路：从之前推理没有考虑的角度（其他器官系统、其他发病机制、被忽略的表现）重新分析，并据此得出结论。",
    },
    "backtracking": {
        "en": "Go back to the step where the reasoning first went wrong, say which step it was and why, and reason "
              "forward again from there.",
        "zh": "回到推理最先出错的那一步，指出是哪一步、错在哪里，然后从那里重新往下推理。",
    },
    "verification": {
        "en": "Check the earlier reasoning against every finding in the case, name what its conclusion fails to "
              "explain, and revise the conclusion so that it explains them.",
        "zh": "逐条对照病例中的每个表现检查之前的推理，指出结论解释不了的地方，并修正结论使其能够解释这些表现。",
    },
    "correction": {
        "en": "Find the specific errors in the earlier reasoning (a misread finding, a wrong inference, a missed "
              "alternative), correct them, and draw the conclusion that follows.",
        "zh": "找出之前推理中的具体错误（误读的表现、错误的推断、遗漏的鉴别诊断），加以纠正，并得出相应的结论。",
    },
}

# The last resort: the reference is shown, and the chain must reach it as if found unaided.
GUIDED = {
    "en": (
        "You are an experienced clinician working through a case. Your earlier reasoning is below as JSON (it may "
        "be empty, and its conclusion is wrong). The correct diagnosis is given for your eyes only. Continue the "
        "reasoning so that it reaches the correct diagnosis through the case findings, as if you had worked it out "
        "yourself: re-examine the findings, notice what the earlier reasoning missed, and change course. Never "
        "mention or hint that the answer was given to you.\n\n"
        "<case>\n{question}\n</case>\n\n<earlier_reasoning>\n{previous}\n</earlier_reasoning>\n\n"
        "<correct_diagnosis>\n{reference}\n</correct_diagnosis>\n\n"
        "Write only the new steps that carry the earlier reasoning forward: new 'Inner Thinking' steps, a 'Final "
        "Conclusion' and a 'Verification'.\n\n{chain_format}"
    ),
    "zh": (
        "你是一名经验丰富的临床医生，正在分析一个病例。下面是你之前的推理（JSON，可能为空，其结论是错误的），以及仅供你参考的正确诊断。"
        "请继续推理，通过病例表现自然地得出正确诊断，就像你自己想到的一样：重新审视表现，发现之前推理遗漏的地方，并调整方向。"
        "不要提及或暗示你事先知道答案。\n\n"
        "<病例>\n{question}\n</病例>\n\n<之前的推理>\n{previous}\n</之前的推理>\n\n"
        "<正确诊断>\n{reference}\n</正确诊断>\n\n"
        "只写接着之前推理往下走的新步骤：新的 'Inner Thinking' 步骤、'Final Conclusion' 和 'Verification'。\n\n"
        "{chain_format}"
    ),
}

NATURAL_THINKING = {
    "en": (
        "Below is a structured record of a clinician's reasoning on a case. Rewrite it as one continuous stream of "
        "private thought: one thought per line, plain sentences, with natural turns such as \"hmm\", \"wait\", "
        "\"also\", \"okay, so\". Keep every step, doubt and change of mind in the record, wrong turns included, in "
        "the same order. No headings, lists or JSON, and none of the words 'Inner Thinking', 'Final Conclusion' or "
        "'Verification'. Reply with the rewritten thinking only.\n\n"
        "<case>\n{question}\n</case>\n\n<reasoning_record>\n{chain}\n</reasoning_record>"
    ),
    "zh": (
        "下面是一位临床医生对某病例推理过程的结构化记录。请把它改写成一段连续的内心思考：每行一个想法，用平实的句子，"
        "并带有“嗯”“等等”“另外”“好，那么”这样自然的转折。按原顺序保留记录里的每一步、每个疑问和每次改变想法，包括走错的路。"
        "不要标题、列表或 JSON，也不要出现 'Inner Thinking'、'Final Conclusion'、'Verification' 这些词。只回复改写后的思考。\n\n"
        "<病例>\n{question}\n</病例>\n\n<推理记录>\n{chain}\n</推理记录>"
    ),
}

FORMAL_RESPONSE = {
    "en": (
        "Below are a case and a clinician's private thinking about it. Write the answer the clinician gives the "
        "reader: first the line 'Diagnosis: <name>' with the final diagnosis, then a concise summary of the "
        "reasoning behind it (the key findings, and why the main alternatives were set aside). Do not refer to the "
        "thinking itself.\n\n<case>\n{question}\n</case>\n\n<thinking>\n{thinking}\n</thinking>"
    ),
    "zh": (
        "下面是一个病例以及一位临床医生对它的内心思考。请写出医生给读者的回答：第一行写“诊断：<名称>”给出最终诊断，"
        "然后简要总结支持该诊断的推理（关键表现，以及排除主要鉴别诊断的理由）。不要提及思考过程本身。\n\n"
        "<病例>\n{question}\n</病例>\n\n<思考>\n{thinking}\n</思考>"
    ),
}
